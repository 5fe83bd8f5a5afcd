/**
 * ManiReports Cloud Offload — Cloudflare Worker.
 *
 * Batches come in two ways, handled alike: queue() (each Queue message is one
 * batch, CONTRACT §5) and fetch() `POST /batches` (the HTTPS offload mode: the
 * batch message as the body, signed per Standard Webhooks with
 * env.CALLBACK_SECRET and verified before the body is parsed;
 * `Authorization: Bearer <AUTH_TOKEN>` too when AUTH_TOKEN is set).
 *
 * Content: the service renders every recipient (the same Jinja2 sandbox as
 * direct mode); each recipient carries its `rendered` subject, text and HTML,
 * its extra `headers` (List-Unsubscribe for campaign mail) and certificate
 * `attachments` (base64). The Worker sends exactly that, as a MIME message
 * (base64 bodies, so every byte arrives as rendered) through the Email Service
 * binding (`env.EMAIL.send(new EmailMessage(from, to, raw))`). A message
 * without `rendered` (queued by an older service) is rendered here with
 * `{{ name }}` substitution only, as the AWS Lambda does, and as strictly as the service renders: a
 * name the recipient's data lacks fails that recipient (`missing_fields: <name>`), never a blank.
 *
 * Mail the LMS handed to the service by SMTP is sent as it was written: such a
 * recipient carries `raw` (the MIME, base64, the service's headers already on
 * top), or `raw_key` (the object in the CERTIFICATES bucket the service put it
 * in when it was too big for the queue) and `raw_url` (a signed link to the
 * same, the recipient's `headers` then put on top here); the bytes go to the
 * binding unchanged but for Received: fields, which
 * the binding refuses (the trace is Cloudflare's to write), from the address of
 * their From: (the binding wants the envelope sender to be it). A batch of only
 * such recipients needs no template.
 *
 * Exactly once: before sending, the Worker writes a marker
 * `deliveries/<company>/<job>/<delivery_id>.json` (`state: sending`, created
 * only if absent) to the R2 bucket bound as MARKERS; after sending it stores
 * the callback there (`state: sent`, webhook id, payload), then posts it. A
 * batch delivered again whose results are stored re-posts them under the same
 * webhook id instead of sending; one whose marker says `sending` without
 * results (a run died mid-send, or another delivery is sending) is not sent
 * blind but retried later, ending in the dead-letter queue if it never
 * resolves (the service's reconcile then settles it by the company's policy).
 * A batch of which nothing could be sent removes its marker and is retried.
 *
 * Retries: a transient send failure stops the batch; what was sent is
 * reported and the rest handed back as `failed` with `retryable: true` (the
 * service re-submits those alone, under another delivery_id). A malformed
 * message is retried into the dead-letter queue (HTTPS: 400). A callback
 * answered 3xx/4xx is logged and not retried. Over HTTPS the answer is 200
 * once the callback is posted, 503 when the batch must come again later.
 *
 * email(): bounce (RFC 3464 delivery status) and complaint (RFC 5965 ARF)
 * reports that Email Routing delivers to this Worker are posted, signed, to
 * the service's `/callbacks/v1/bounces/cloudflare/<COMPANY_ID>` under
 * ALLOWED_CALLBACK_PREFIX, where a hard bounce or complaint suppresses the
 * address.
 *
 * fetch(): /certificates/* is handled by certificates.js (R2 gateway);
 * `POST /batches` as above; everything else is 404.
 *
 * Recipient addresses and data are never logged.
 */
import { EmailMessage } from "cloudflare:email";
import { handleCertificates } from "./certificates.js";

const PLACEHOLDER = /\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}/g;
const HTML_ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;" };
/** Email Service error codes worth another attempt later. */
const RETRYABLE_EMAIL_CODE = /RATE_LIMIT|LIMIT_EXCEEDED|INTERNAL|UNAVAILABLE|TIMEOUT|TEMPORARY/i;
const SEND_CONCURRENCY = 6;
const MAX_RETRY_DELAY_S = 43200; // Cloudflare Queues' ceiling (12 h)
const SIGNATURE_TOLERANCE_S = 300;
const MAX_REPORT_BYTES = 256 * 1024;
const encoder = new TextEncoder();

class InvalidMessage extends Error {}
class CallbackRejected extends Error {}

export default {
  /** /certificates/* to the R2 gateway, `POST /batches` (HTTPS offload); nothing else. */
  async fetch(request, env, ctx) {
    const { pathname } = new URL(request.url);
    if (pathname.startsWith("/certificates/")) {
      return handleCertificates(request, env, ctx);
    }
    if (pathname === "/batches" && request.method === "POST") {
      return handleBatchRequest(request, env);
    }
    return new Response("Not found", { status: 404 });
  },

  /** Queue consumer: one batch message at a time. */
  async queue(batch, env) {
    if (!env.CALLBACK_SECRET || !validPrefix(env)) {
      console.error("CALLBACK_SECRET or ALLOWED_CALLBACK_PREFIX is not set; retrying the whole batch");
      batch.retryAll({ delaySeconds: retryDelay(1, env) });
      return;
    }
    for (const message of batch.messages) {
      await handleMessage(message, env);
    }
  },

  /** Bounce and complaint reports routed to this Worker: posted to the service, signed. */
  async email(message, env) {
    await handleReport(message, env);
  },
};

// ---------------------------------------------------------------- legacy rendering

/** A data value as text, the same way the Lambda renders it. */
function textValue(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "string") return value;
  return JSON.stringify(value);
}

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (ch) => HTML_ESCAPES[ch]);
}

/** A placeholder the recipient's data has no value for: that recipient fails (undefined is strict,
 * as in the service: nothing is sent with a blank). */
class MissingField extends Error {
  constructor(name) {
    super(`missing_fields: ${name}`);
  }
}

/** Substitute `{{ name }}` placeholders; only the data's own keys are looked up, and a name the data
 * lacks (or has as null) throws `MissingField`. */
function render(template, data, escape) {
  if (!template) return "";
  return template.replace(PLACEHOLDER, (_, name) => {
    const value = Object.hasOwn(data, name) ? data[name] : undefined;
    if (value === null || value === undefined) throw new MissingField(name);
    const text = textValue(value);
    return escape ? escapeHtml(text) : text;
  });
}

function renderRecipient(template, data) {
  return {
    subject: render(template.subject, data, false).replace(/[\r\n]+/g, " ").trim(),
    text: template.text ? render(template.text, data, false) : null,
    html: template.html ? render(template.html, data, true) : null,
  };
}

/** What to send this recipient: the service's rendering, else the legacy one. */
function contentOf(message, recipient) {
  const rendered = recipient.rendered;
  if (!rendered) return renderRecipient(message.template, recipient.data || {});
  return {
    subject: rendered.subject.replace(/[\r\n]+/g, " ").trim(),
    text: typeof rendered.text === "string" ? rendered.text : null,
    html: typeof rendered.html === "string" ? rendered.html : null,
  };
}

// ---------------------------------------------------------------- the message

function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Check a body as a CONTRACT §5 batch message. */
function parseMessage(body, env) {
  let message = body;
  if (typeof body === "string") {
    try {
      message = JSON.parse(body);
    } catch {
      throw new InvalidMessage("body is not JSON");
    }
  }
  if (!isObject(message)) throw new InvalidMessage("body is not a JSON object");
  for (const key of ["job_id", "batch_number"]) {
    if (!Number.isInteger(message[key])) throw new InvalidMessage(`${key} is missing or not an integer`);
  }
  for (const key of ["callback_url", "sender"]) {
    if (typeof message[key] !== "string" || !message[key]) throw new InvalidMessage(`${key} is missing`);
  }
  if (!Array.isArray(message.recipients)) throw new InvalidMessage("recipients is not a list");
  for (const recipient of message.recipients) checkRecipient(recipient);
  const template = message.template;
  const templated = message.recipients.some((recipient) => !isRaw(recipient));
  if (templated && (!isObject(template) || typeof template.subject !== "string" || !(template.text || template.html))) {
    throw new InvalidMessage("template needs a subject and a text or html body");
  }
  if (message.delivery_id !== undefined && typeof message.delivery_id !== "string") {
    throw new InvalidMessage("delivery_id must be a string");
  }
  checkCallbackUrl(message.callback_url, env);
  return message;
}

/** The recipient's message is the LMS's own MIME (SMTP submission). */
function isRaw(recipient) {
  return isObject(recipient) && ("raw" in recipient || "raw_key" in recipient || "raw_url" in recipient);
}

function checkRecipient(recipient) {
  if (!isObject(recipient) || typeof recipient.email !== "string" || /[\r\n<>,]/.test(recipient.email)) {
    throw new InvalidMessage("every recipient needs an email");
  }
  if (isRaw(recipient)) {
    if (("raw" in recipient && typeof recipient.raw !== "string")
        || ("raw_key" in recipient && typeof recipient.raw_key !== "string")
        || ("raw_url" in recipient && !/^https?:\/\//.test(String(recipient.raw_url)))
        || (recipient.envelope_from !== undefined && (typeof recipient.envelope_from !== "string"
            || /[\r\n<>,\s]/.test(recipient.envelope_from)))) {
      throw new InvalidMessage("raw needs base64 text, raw_key a key, raw_url a link, envelope_from an address");
    }
  }
  if (recipient.data !== undefined && recipient.data !== null && !isObject(recipient.data)) {
    throw new InvalidMessage("recipient data must be an object");
  }
  if (recipient.rendered !== undefined && (!isObject(recipient.rendered)
      || typeof recipient.rendered.subject !== "string")) {
    throw new InvalidMessage("rendered needs a subject");
  }
  const headers = recipient.headers ?? {};
  if (!isObject(headers) || Object.entries(headers).some(([name, value]) =>
    !/^[A-Za-z0-9-]+$/.test(name) || typeof value !== "string" || /[\r\n\0]/.test(value))) {
    throw new InvalidMessage("headers must be single-line strings");
  }
  for (const attachment of recipient.attachments ?? []) {
    if (!isObject(attachment) || !["filename", "content_type", "content"].every(
      (key) => typeof attachment[key] === "string" && !/[\r\n"]/.test(attachment[key]))) {
      throw new InvalidMessage("attachments need filename, content_type and content");
    }
  }
}

/** ALLOWED_CALLBACK_PREFIX is required: the service's public URL. */
function validPrefix(env) {
  return /^https?:\/\/./.test(env.ALLOWED_CALLBACK_PREFIX || "");
}

function checkCallbackUrl(url, env) {
  if (!/^https?:\/\//.test(url)) throw new InvalidMessage("callback_url must be http(s)");
  if (!url.startsWith(env.ALLOWED_CALLBACK_PREFIX)) {
    throw new InvalidMessage("callback_url is not under ALLOWED_CALLBACK_PREFIX");
  }
}

// ---------------------------------------------------------------- MIME

function bytesToBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function wrap76(base64) {
  return base64.replace(/.{1,76}/g, "$&\r\n");
}

/** RFC 2047 encoded words (UTF-8, base64) of at most 45 bytes each, folded. */
function encodeWords(text) {
  const words = [];
  let chunk = "";
  for (const ch of text) {
    if (encoder.encode(chunk + ch).length > 45) {
      words.push(chunk);
      chunk = "";
    }
    chunk += ch;
  }
  if (chunk || !words.length) words.push(chunk);
  return words.map((word) => `=?UTF-8?B?${bytesToBase64(encoder.encode(word))}?=`).join("\r\n ");
}

function textPart(type, body) {
  return `Content-Type: ${type}; charset=UTF-8\r\nContent-Transfer-Encoding: base64\r\n\r\n`
    + wrap76(bytesToBase64(encoder.encode(body)));
}

function multipart(type, parts) {
  const boundary = `=_${crypto.randomUUID().replaceAll("-", "")}`;
  return `Content-Type: multipart/${type}; boundary="${boundary}"\r\n\r\n`
    + parts.map((part) => `--${boundary}\r\n${part}\r\n`).join("") + `--${boundary}--\r\n`;
}

/** The raw MIME message for one recipient; returns `{raw, messageId}`. */
function buildMime(sender, to, content, headers, attachments) {
  const domain = sender.slice(sender.lastIndexOf("@") + 1);
  const messageId = `<${crypto.randomUUID()}@${domain}>`;
  const bodies = [];
  if (content.text !== null || content.html === null) bodies.push(textPart("text/plain", content.text ?? ""));
  if (content.html !== null) bodies.push(textPart("text/html", content.html));
  let body = bodies.length > 1 ? multipart("alternative", bodies) : bodies[0];
  if (attachments.length) {
    body = multipart("mixed", [body, ...attachments.map((a) =>
      `Content-Type: ${a.content_type}; name="${a.filename}"\r\nContent-Transfer-Encoding: base64\r\n`
      + `Content-Disposition: attachment; filename="${a.filename}"\r\n\r\n`
      + wrap76(a.content.replace(/\s+/g, "")))]);
  }
  const lines = [
    `From: ${sender}`, `To: ${to}`, `Subject: ${encodeWords(content.subject)}`,
    `Date: ${new Date().toUTCString()}`, `Message-ID: ${messageId}`, "MIME-Version: 1.0",
    ...Object.entries(headers).filter(([, value]) => value).map(([name, value]) => `${name}: ${value}`),
  ];
  return { raw: `${lines.join("\r\n")}\r\n${body}`, messageId };
}

// ---------------------------------------------------------------- sending

const MAX_RAW_BYTES = 25 * 1024 * 1024;

/** The LMS's MIME of a raw recipient: inline, from the CERTIFICATES bucket, or from its signed link. */
async function rawBytes(recipient, env) {
  if (typeof recipient.raw === "string") {
    return Uint8Array.from(atob(recipient.raw), (ch) => ch.charCodeAt(0));
  }
  if (recipient.raw_key && env.CERTIFICATES) {
    const object = await env.CERTIFICATES.get(recipient.raw_key);
    if (object) return new Uint8Array(await object.arrayBuffer());
  }
  if (recipient.raw_url) {
    const response = await fetch(recipient.raw_url, { redirect: "manual" });
    if (response.ok) {
      const bytes = new Uint8Array(await response.arrayBuffer());
      if (bytes.length <= MAX_RAW_BYTES) return bytes;
    } else {
      await response.body?.cancel();
    }
  }
  return null;
}

/** The header block's end (the index of the empty line's first byte), or -1. */
function headerEnd(bytes) {
  for (let i = 0; i + 1 < bytes.length; i++) {
    if (bytes[i] === 10 && (bytes[i + 1] === 10 || (bytes[i + 1] === 13 && bytes[i + 2] === 10))) return i + 1;
  }
  return -1;
}

/**
 * The MIME without its Received: fields (the binding refuses a message that has one: the trace is
 * Cloudflare's to write); every other byte as it came.
 */
function withoutReceived(bytes) {
  const end = headerEnd(bytes);
  if (end < 0) return bytes;
  let head = ""; // one character per byte (TextDecoder's "latin1" is windows-1252, which is not)
  for (const byte of bytes.subarray(0, end)) head += String.fromCharCode(byte);
  const fields = head.match(/[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*\r?\n/g) ?? [];
  const kept = fields.filter((field) => !/^received[ \t]*:/i.test(field));
  if (kept.length === fields.length) return bytes;
  const keptBytes = Uint8Array.from(kept.join(""), (ch) => ch.charCodeAt(0));
  const out = new Uint8Array(keptBytes.length + bytes.length - end);
  out.set(keptBytes);
  out.set(bytes.subarray(end), keptBytes.length);
  return out;
}

/**
 * The MIME with `headers` at the top of its header block, replacing the fields of the same names (each
 * with its folded lines): a message read by its key or link carries the recipient's own fields apart.
 */
function withHeaders(bytes, headers) {
  const names = Object.keys(headers ?? {});
  if (names.length === 0) return bytes;
  let end = headerEnd(bytes);
  if (end < 0) end = bytes.length;
  let head = "";
  for (const byte of bytes.subarray(0, end)) head += String.fromCharCode(byte);
  const eol = head.includes("\r\n") || head === "" ? "\r\n" : "\n";
  const wanted = new Set(names.map((name) => name.toLowerCase()));
  const fields = head.match(/[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*(?:\r?\n|$)/g) ?? [];
  const kept = fields.filter((field) => field && !wanted.has(field.split(":", 1)[0].trim().toLowerCase()));
  const added = new TextEncoder().encode(names.map((name) => `${name}: ${headers[name]}${eol}`).join(""));
  const keptBytes = Uint8Array.from(kept.join(""), (ch) => ch.charCodeAt(0));
  const out = new Uint8Array(added.length + keptBytes.length + bytes.length - end);
  out.set(added);
  out.set(keptBytes, added.length);
  out.set(bytes.subarray(end), added.length + keptBytes.length);
  return out;
}

/** Send one recipient the LMS's MIME as it is (without Received: fields, which the binding refuses). */
async function sendRaw(message, recipient, env) {
  let bytes;
  try {
    bytes = await rawBytes(recipient, env);
  } catch {
    return { email: recipient.email, status: "failed", error: "invalid_raw_message" };
  }
  if (bytes === null) return { email: recipient.email, status: "retry" }; // the stored copy is not there (yet)
  bytes = withoutReceived(bytes);
  if (typeof recipient.raw !== "string") bytes = withHeaders(bytes, recipient.headers); // read by key or link
  const head = new TextDecoder().decode(bytes.subarray(0, Math.min(bytes.length, 64 * 1024))).split(/\r?\n\r?\n/)[0];
  const messageId = /^Message-ID:[ \t]*(\S+)/im.exec(head)?.[1] ?? null;
  // the binding wants the envelope sender to be the From: address itself
  const fromField = /^From:[ \t]*((?:.*)(?:\r?\n[ \t].*)*)/im.exec(head)?.[1] ?? "";
  const fromAddress = /<([^<>\s]+@[^<>\s]+)>/.exec(fromField)?.[1] ?? /([^\s<>"]+@[^\s<>"]+)/.exec(fromField)?.[1];
  try {
    const sent = await env.EMAIL.send(new EmailMessage(fromAddress || recipient.envelope_from || message.sender,
      recipient.email, new Response(bytes).body));
    return { email: recipient.email, status: "sent", message_id: messageId ?? sent?.messageId ?? null };
  } catch (err) {
    return emailError(recipient, err);
  }
}

function emailError(recipient, err) {
  const code = err && err.code ? String(err.code) : "";
  if (code && RETRYABLE_EMAIL_CODE.test(code)) {
    return { email: recipient.email, status: "retry" };
  }
  // the code only, never the binding's text: the service maps codes to its own words
  const safe = code.replace(/[^A-Za-z0-9_.-]/g, "").slice(0, 64);
  return { email: recipient.email, status: "failed", error: safe || "send_refused" };
}

/** Send one recipient; a result in the callback's shape, or status "retry". */
async function sendOne(message, recipient, env) {
  if (isRaw(recipient)) return sendRaw(message, recipient, env);
  let content;
  try {
    content = contentOf(message, recipient);
  } catch (err) {
    if (err instanceof MissingField) return { email: recipient.email, status: "failed", error: err.message };
    throw err;
  }
  const { raw, messageId } = buildMime(message.sender, recipient.email, content, recipient.headers ?? {},
    recipient.attachments ?? []);
  try {
    const sent = await env.EMAIL.send(new EmailMessage(message.sender, recipient.email, raw));
    // our own Message-ID: the one bounce reports quote back
    return { email: recipient.email, status: "sent", message_id: messageId ?? sent?.messageId ?? null };
  } catch (err) {
    return emailError(recipient, err);
  }
}

/** Send every recipient, a few at a time; stop starting new sends after a transient failure. */
async function sendBatch(message, env) {
  const recipients = message.recipients;
  const results = new Array(recipients.length);
  let next = 0;
  let retry = false;
  async function lane() {
    while (!retry && next < recipients.length) {
      const index = next++;
      results[index] = await sendOne(message, recipients[index], env);
      if (results[index].status === "retry") retry = true;
    }
  }
  const lanes = Math.min(SEND_CONCURRENCY, recipients.length);
  await Promise.all(Array.from({ length: lanes }, lane));
  const final = results.filter((result) => result && result.status !== "retry");
  const done = new Set(final.map((result) => result.email));
  const left = retry ? recipients.map((r) => r.email).filter((email) => !done.has(email)) : [];
  return { total: recipients.length, results: final, retry, left };
}

function batchStatus(outcome) {
  const sent = outcome.results.filter((result) => result.status === "sent").length;
  if (sent === outcome.total) return "sent";
  return sent === 0 ? "failed" : "partial";
}

// ---------------------------------------------------------------- signatures

function decodeSecret(secret) {
  const raw = secret.startsWith("whsec_") ? secret.slice("whsec_".length) : secret;
  const binary = atob(raw + "=".repeat((4 - (raw.length % 4)) % 4));
  return Uint8Array.from(binary, (ch) => ch.charCodeAt(0));
}

function toBase64(buffer) {
  return bytesToBase64(new Uint8Array(buffer));
}

async function hmacKey(secret, usage) {
  return crypto.subtle.importKey("raw", decodeSecret(secret), { name: "HMAC", hash: "SHA-256" }, false, [usage]);
}

/** The Standard Webhooks headers for `body`, timestamped now. */
async function signHeaders(secret, msgId, body) {
  const timestamp = Math.floor(Date.now() / 1000);
  const key = await hmacKey(secret, "sign");
  const signature = await crypto.subtle.sign("HMAC", key, encoder.encode(`${msgId}.${timestamp}.${body}`));
  return {
    "webhook-id": msgId,
    "webhook-timestamp": String(timestamp),
    "webhook-signature": `v1,${toBase64(signature)}`,
  };
}

/** True when `bytes` carry a valid, fresh Standard Webhooks signature (constant-time verify). */
async function verifySignature(secret, headers, bytes) {
  const msgId = headers.get("webhook-id");
  const timestamp = headers.get("webhook-timestamp");
  const offered = headers.get("webhook-signature");
  if (!msgId || !timestamp || !offered || !/^\d+$/.test(timestamp)) return false;
  if (Math.abs(Date.now() / 1000 - Number(timestamp)) > SIGNATURE_TOLERANCE_S) return false;
  const key = await hmacKey(secret, "verify");
  const prefix = encoder.encode(`${msgId}.${timestamp}.`);
  const signed = new Uint8Array(prefix.length + bytes.length);
  signed.set(prefix);
  signed.set(bytes, prefix.length);
  for (const part of offered.split(" ")) {
    const [version, value] = part.split(",", 2);
    if (version !== "v1" || !value) continue;
    let signature;
    try {
      signature = Uint8Array.from(atob(value), (ch) => ch.charCodeAt(0));
    } catch {
      continue;
    }
    if (await crypto.subtle.verify("HMAC", key, signature, signed)) return true;
  }
  return false;
}

/** Constant-time comparison of the bearer token, when AUTH_TOKEN is set. */
async function authorized(request, env) {
  if (!env.AUTH_TOKEN) return true;
  const offered = encoder.encode(request.headers.get("authorization") || "");
  const wanted = encoder.encode(`Bearer ${env.AUTH_TOKEN}`);
  const [a, b] = await Promise.all([offered, wanted].map((v) => crypto.subtle.digest("SHA-256", v)));
  return crypto.subtle.timingSafeEqual(a, b);
}

// ---------------------------------------------------------------- callbacks

/** POST a signed JSON body, a few attempts in place; throws CallbackRejected or Error. */
async function postSigned(url, payload, msgId, env) {
  const body = JSON.stringify(payload);
  const attempts = Number(env.CALLBACK_ATTEMPTS || 3);
  const timeoutMs = Number(env.CALLBACK_TIMEOUT_S || 10) * 1000;
  let last = "no attempt";
  for (let attempt = 0; attempt < attempts; attempt++) {
    if (attempt) await new Promise((resolve) => setTimeout(resolve, 250 * 2 ** attempt));
    const headers = {
      "content-type": "application/json",
      "user-agent": "manireports-offload-worker",
      ...(await signHeaders(env.CALLBACK_SECRET, msgId, body)),
    };
    let response;
    try {
      response = await fetch(url, {
        method: "POST", headers, body, redirect: "manual", signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (err) {
      last = err?.name === "TimeoutError" ? "timeout" : err?.message || "fetch failed";
      continue;
    }
    await response.body?.cancel();
    if (response.ok) return;
    if (response.status < 500 && response.status !== 408 && response.status !== 429) {
      throw new CallbackRejected(`HTTP ${response.status}`);
    }
    last = `HTTP ${response.status}`;
  }
  throw new Error(`callback failed after ${attempts} attempts: ${last}`);
}

// ---------------------------------------------------------------- markers (exactly once)

function markerKey(message, fallback) {
  const delivery = String(message.delivery_id || fallback).replace(/[^A-Za-z0-9._-]/g, "_").slice(0, 200);
  return `deliveries/${Number(message.company_id) || 0}/${message.job_id}/${delivery}.json`;
}

async function readMarker(env, key) {
  const object = await env.MARKERS.get(key);
  return object ? object.json() : null;
}

/** Create the `sending` marker; false when one appeared meanwhile. */
async function claimMarker(env, key) {
  const written = await env.MARKERS.put(key, JSON.stringify({ state: "sending", at: Date.now() }), {
    onlyIf: new Headers({ "If-None-Match": "*" }),
  });
  return written !== null;
}

/**
 * Send one batch message exactly once and call back.
 * @returns {Promise<"done"|"retry">}
 */
async function processMessage(message, env, fallbackKey) {
  const tag = `Batch ${message.job_id}/${message.batch_number}`;
  if (!env.MARKERS) throw new Error("the MARKERS R2 binding is missing");
  const key = markerKey(message, fallbackKey);
  let record = await readMarker(env, key);
  if (record === null && !(await claimMarker(env, key))) {
    record = (await readMarker(env, key)) ?? { state: "sending" };
  }
  if (record !== null) {
    if (record.state !== "sent") {
      console.warn(`${tag}: a delivery of it is being sent or died mid-send; not sending blind, will retry`);
      return "retry";
    }
    console.log(`${tag}: already sent; posting its stored results again`);
    return report(message, record.payload, record.webhook_id, env);
  }
  const outcome = await sendBatch(message, env);
  const sent = outcome.results.filter((result) => result.status === "sent").length;
  console.log(`${tag}: ${sent} sent, ${outcome.results.length - sent} failed, `
    + `${outcome.total - outcome.results.length} left to retry`);
  if (!outcome.results.length && outcome.retry) {
    await env.MARKERS.delete(key); // nothing was sent: the whole message may go again
    return "retry";
  }
  // Some were sent: report them, and hand what is left back to the service as
  // retryable failures; it re-submits only those, so nobody gets a second email.
  const leftOver = outcome.left.map((email) => ({
    email, status: "failed", error: "transient_failure", retryable: true,
  }));
  const payload = {
    job_id: message.job_id, batch_number: message.batch_number,
    status: batchStatus(outcome), results: outcome.results.concat(leftOver),
  };
  const webhookId = `msg_${crypto.randomUUID().replaceAll("-", "")}`; // the same on every post
  await env.MARKERS.put(key, JSON.stringify({ state: "sent", webhook_id: webhookId, payload }));
  return report(message, payload, webhookId, env);
}

async function report(message, payload, webhookId, env) {
  const tag = `Batch ${message.job_id}/${message.batch_number}`;
  try {
    await postSigned(message.callback_url, payload, webhookId, env);
  } catch (err) {
    if (!(err instanceof CallbackRejected)) {
      console.warn(`${tag}: ${err.message}; will retry (results are stored, nothing is sent again)`);
      return "retry";
    }
    console.error(`${tag}: callback refused (${err.message}); not retrying, emails were sent`);
  }
  return "done";
}

// ---------------------------------------------------------------- one queue message

function retryDelay(attempts, env) {
  const base = Number(env.RETRY_BASE_DELAY_S ?? 30);
  return Math.min(MAX_RETRY_DELAY_S, Math.round(base * 2 ** Math.max(0, attempts - 1)));
}

async function handleMessage(queueMessage, env) {
  const retry = () => queueMessage.retry({ delaySeconds: retryDelay(queueMessage.attempts, env) });
  let message;
  try {
    message = parseMessage(queueMessage.body, env);
  } catch (err) {
    console.error(`Queue message ${queueMessage.id}: invalid batch message (${err.message}); `
      + "retrying towards the dead-letter queue");
    retry();
    return;
  }
  let outcome;
  try {
    outcome = await processMessage(message, env, queueMessage.id);
  } catch (err) {
    // only the type: a message could quote recipient data
    console.error(`Queue message ${queueMessage.id}: unexpected ${err?.name || "error"}; will retry`);
    outcome = "retry";
  }
  if (outcome === "retry") retry();
  else queueMessage.ack();
}

// ---------------------------------------------------------------- POST /batches

function jsonResponse(status, body, headers = {}) {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });
}

async function handleBatchRequest(request, env) {
  if (!env.CALLBACK_SECRET || !validPrefix(env)) return jsonResponse(503, { error: "not_configured" });
  if (!(await authorized(request, env))) return jsonResponse(401, { error: "unauthorized" });
  const bytes = new Uint8Array(await request.arrayBuffer());
  if (!(await verifySignature(env.CALLBACK_SECRET, request.headers, bytes))) {
    return jsonResponse(401, { error: "bad_signature" });
  }
  let message;
  try {
    message = parseMessage(new TextDecoder().decode(bytes), env);
  } catch (err) {
    console.error(`Request ${request.headers.get("webhook-id")}: invalid batch message (${err.message})`);
    return jsonResponse(400, { error: "invalid_message" });
  }
  const outcome = await processMessage(message, env, request.headers.get("webhook-id"));
  if (outcome === "retry") return jsonResponse(503, { error: "retry_later" }, { "retry-after": "30" });
  return jsonResponse(200, { ok: true });
}

// ---------------------------------------------------------------- bounce reports

/** The header block of a MIME part: `{name: value}`, lower-case names, unfolded. */
function headerBlock(text) {
  const fields = {};
  for (const line of text.replace(/\r\n/g, "\n").replace(/\n[ \t]+/g, " ").split("\n")) {
    const colon = line.indexOf(":");
    if (colon > 0) fields[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  return fields;
}

function address(value) {
  const match = /(?:rfc822;)?\s*<?([^\s<>;]+@[^\s<>;]+)>?/i.exec(value || "");
  return match ? match[1] : null;
}

/**
 * Bounce and complaint events in a report: RFC 3464 `message/delivery-status`
 * (Action: failed → hard for 5.x.x, soft otherwise; delayed → soft) and RFC 5965
 * `message/feedback-report` (a complaint).
 */
export function parseReport(raw) {
  const text = raw.replace(/\r\n/g, "\n");
  const messageId = /^Message-ID:\s*(\S+)/im.exec(text.split(/\n\n/).slice(1).join("\n\n"))?.[1] ?? null;
  const events = [];
  const feedback = /Content-Type:\s*message\/feedback-report[^\n]*\n(?:[^\n]+\n)*\n([\s\S]*?)(?:\n--|$)/i.exec(text);
  if (feedback) {
    const fields = headerBlock(feedback[1]);
    const email = address(fields["original-rcpt-to"]);
    if (email) events.push({ type: "complaint", email, message_id: messageId, reason: fields["feedback-type"] });
    return events;
  }
  const status = /Content-Type:\s*message\/delivery-status[^\n]*\n(?:[^\n]+\n)*\n([\s\S]*?)(?:\n--|$)/i.exec(text);
  if (!status) return events;
  for (const block of status[1].split(/\n\s*\n/)) {
    const fields = headerBlock(block);
    const email = address(fields["final-recipient"] || fields["original-recipient"]);
    const action = (fields.action || "").toLowerCase();
    if (!email || !["failed", "delayed"].includes(action)) continue;
    const hard = action === "failed" && /^5\./.test(fields.status || "");
    events.push({
      type: "bounce", bounce_type: hard ? "hard" : "soft", email, message_id: messageId,
      reason: [fields.status, fields["diagnostic-code"]].filter(Boolean).join(" "),
    });
  }
  return events;
}

async function handleReport(message, env) {
  if (!env.CALLBACK_SECRET || !validPrefix(env) || !env.COMPANY_ID) {
    console.error("CALLBACK_SECRET, ALLOWED_CALLBACK_PREFIX or COMPANY_ID is not set; report refused");
    message.setReject("not configured");
    return;
  }
  if (message.rawSize > MAX_REPORT_BYTES) {
    message.setReject("report too large");
    return;
  }
  const events = parseReport(await new Response(message.raw).text());
  if (!events.length) {
    console.log("Inbound mail: not a bounce or complaint report; ignored");
    return;
  }
  const url = `${env.ALLOWED_CALLBACK_PREFIX.replace(/\/+$/, "")}/callbacks/v1/bounces/cloudflare/`
    + encodeURIComponent(env.COMPANY_ID);
  const msgId = `msg_${crypto.randomUUID().replaceAll("-", "")}`;
  try {
    await postSigned(url, { events }, msgId, env);
    console.log(`Inbound mail: ${events.length} report(s) posted`);
  } catch (err) {
    // a temporary rejection makes the sending server deliver the report again later
    console.warn(`Inbound mail: reports not delivered (${err.message})`);
    message.setReject("temporarily unable to process the report");
  }
}
