/**
 * ManiReports Cloud Offload — Cloudflare Worker.
 *
 * queue(): each Queue message is one batch (CONTRACT §5). Every recipient's
 * subject, text and HTML are rendered from the message's template and the
 * recipient's `data`, then sent with the Email Service binding
 * (`env.EMAIL.send({from, to, subject, text, html})`). A callback signed per
 * Standard Webhooks (CONTRACT §4, HMAC-SHA256 with env.CALLBACK_SECRET,
 * `whsec_...`) is POSTed to the message's `callback_url`; then the message is
 * acked, or retried with a growing delay.
 *
 * Templates: `{{ name }}` substitution only, exactly as the AWS Lambda does
 * (cloud_workers/aws/lambda_handler.py): a missing or null value renders
 * empty, values are HTML-escaped in the HTML part, used as-is in the text,
 * and CR/LF become spaces in the subject. Anything else is left as written.
 *
 * Retries: a transient send failure (rate limit, daily limit, internal error)
 * stops the batch. If nothing was sent, the message is retried; otherwise the
 * callback reports what was sent and returns the rest as `failed` with
 * `retryable: true`, which the service re-submits alone (nobody is emailed
 * twice), and the message is acked. A callback that cannot be delivered
 * (5xx, timeout, unreachable) retries the message: the one case that can
 * email someone twice. A malformed message is retried until it lands in the
 * dead-letter queue. Recipients the Email Service refuses permanently are
 * reported `failed`; a callback answered 3xx/4xx is logged and not retried.
 *
 * fetch(): /certificates/* is handled by certificates.js (R2 gateway);
 * everything else is 404.
 *
 * Recipient addresses and data are never logged.
 */
import { handleCertificates } from "./certificates.js";

const PLACEHOLDER = /\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}/g;
const HTML_ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;" };
/** Email Service error codes worth another attempt later. */
const RETRYABLE_EMAIL_CODE = /RATE_LIMIT|LIMIT_EXCEEDED|INTERNAL|UNAVAILABLE|TIMEOUT|TEMPORARY/i;
const SEND_CONCURRENCY = 6;
const MAX_RETRY_DELAY_S = 43200; // Cloudflare Queues' ceiling (12 h)
const encoder = new TextEncoder();

class InvalidMessage extends Error {}
class CallbackRejected extends Error {}

export default {
  /** Route /certificates/* to the R2 gateway; nothing else is served. */
  async fetch(request, env, ctx) {
    const { pathname } = new URL(request.url);
    if (pathname.startsWith("/certificates/")) {
      return handleCertificates(request, env, ctx);
    }
    return new Response("Not found", { status: 404 });
  },

  /** Queue consumer: one batch message at a time. */
  async queue(batch, env) {
    if (!env.CALLBACK_SECRET) {
      console.error("CALLBACK_SECRET is not set; retrying the whole batch");
      batch.retryAll({ delaySeconds: retryDelay(1, env) });
      return;
    }
    for (const message of batch.messages) {
      await handleMessage(message, env);
    }
  },
};

// ---------------------------------------------------------------- rendering

/** A data value as text, the same way the Lambda renders it. */
function textValue(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "string") return value;
  return JSON.stringify(value);
}

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (ch) => HTML_ESCAPES[ch]);
}

/** Substitute `{{ name }}` placeholders; only the data's own keys are looked up. */
function render(template, data, escape) {
  if (!template) return "";
  return template.replace(PLACEHOLDER, (_, name) => {
    const text = textValue(Object.hasOwn(data, name) ? data[name] : undefined);
    return escape ? escapeHtml(text) : text;
  });
}

function renderRecipient(template, data) {
  return {
    subject: render(template.subject, data, false).replace(/[\r\n]+/g, " ").trim(),
    text: render(template.text, data, false),
    html: render(template.html, data, true),
  };
}

// ---------------------------------------------------------------- the message

function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Check a Queue message body as a CONTRACT §5 batch message. */
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
  const template = message.template;
  if (!isObject(template) || typeof template.subject !== "string" || !(template.text || template.html)) {
    throw new InvalidMessage("template needs a subject and a text or html body");
  }
  if (!Array.isArray(message.recipients)) throw new InvalidMessage("recipients is not a list");
  for (const recipient of message.recipients) {
    if (!isObject(recipient) || typeof recipient.email !== "string") {
      throw new InvalidMessage("every recipient needs an email");
    }
    if (recipient.data !== undefined && recipient.data !== null && !isObject(recipient.data)) {
      throw new InvalidMessage("recipient data must be an object");
    }
  }
  checkCallbackUrl(message.callback_url, env);
  return message;
}

function checkCallbackUrl(url, env) {
  if (!/^https?:\/\//.test(url)) throw new InvalidMessage("callback_url must be http(s)");
  const prefix = env.ALLOWED_CALLBACK_PREFIX || "";
  if (prefix && !url.startsWith(prefix)) {
    throw new InvalidMessage("callback_url is not under ALLOWED_CALLBACK_PREFIX");
  }
}

// ---------------------------------------------------------------- sending

/** Send one recipient; a result in the callback's shape, or status "retry". */
async function sendOne(message, recipient, env) {
  const parts = renderRecipient(message.template, recipient.data || {});
  const email = { from: message.sender, to: recipient.email, subject: parts.subject };
  if (message.template.text) email.text = parts.text;
  if (message.template.html) email.html = parts.html;
  try {
    const sent = await env.EMAIL.send(email);
    return { email: recipient.email, status: "sent", message_id: sent?.messageId ?? null };
  } catch (err) {
    const code = err && err.code ? String(err.code) : "";
    if (code && RETRYABLE_EMAIL_CODE.test(code)) {
      return { email: recipient.email, status: "retry" };
    }
    const reason = err && err.message ? err.message : String(err);
    return { email: recipient.email, status: "failed", error: code ? `${code}: ${reason}` : reason };
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

// ---------------------------------------------------------------- callback

function decodeSecret(secret) {
  const raw = secret.startsWith("whsec_") ? secret.slice("whsec_".length) : secret;
  const binary = atob(raw + "=".repeat((4 - (raw.length % 4)) % 4));
  return Uint8Array.from(binary, (ch) => ch.charCodeAt(0));
}

function toBase64(buffer) {
  let binary = "";
  for (const byte of new Uint8Array(buffer)) binary += String.fromCharCode(byte);
  return btoa(binary);
}

/** The Standard Webhooks headers for `body`, timestamped now. */
async function signHeaders(secret, msgId, body) {
  const timestamp = Math.floor(Date.now() / 1000);
  const key = await crypto.subtle.importKey(
    "raw", decodeSecret(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const signature = await crypto.subtle.sign("HMAC", key, encoder.encode(`${msgId}.${timestamp}.${body}`));
  return {
    "webhook-id": msgId,
    "webhook-timestamp": String(timestamp),
    "webhook-signature": `v1,${toBase64(signature)}`,
  };
}

/** POST the signed callback, a few attempts in place; throws CallbackRejected or Error. */
async function postCallback(url, payload, env) {
  const body = JSON.stringify(payload);
  const msgId = `msg_${crypto.randomUUID().replaceAll("-", "")}`; // same id on every attempt
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
  const tag = `Batch ${message.job_id}/${message.batch_number}`;
  const outcome = await sendBatch(message, env);
  const sent = outcome.results.filter((result) => result.status === "sent").length;
  console.log(`${tag}: ${sent} sent, ${outcome.results.length - sent} failed, `
    + `${outcome.total - outcome.results.length} left to retry`);
  if (!outcome.results.length && outcome.retry) {
    retry(); // nothing was sent: deliver the whole message again
    return;
  }
  // Some were sent: report them, and hand what is left back to the service as
  // retryable failures; it re-submits only those, so nobody gets a second email.
  const leftOver = outcome.left.map((email) => ({
    email, status: "failed", error: "transient failure", retryable: true,
  }));
  const payload = {
    job_id: message.job_id, batch_number: message.batch_number,
    status: batchStatus(outcome), results: outcome.results.concat(leftOver),
  };
  try {
    await postCallback(message.callback_url, payload, env);
  } catch (err) {
    if (!(err instanceof CallbackRejected)) {
      console.warn(`${tag}: ${err.message}; will retry`);
      retry();
      return;
    }
    console.error(`${tag}: callback refused (${err.message}); not retrying, emails were sent`);
  }
  queueMessage.ack();
}
