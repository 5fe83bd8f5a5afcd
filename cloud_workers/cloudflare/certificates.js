/**
 * Certificate gateway: R2 behind HMAC-signed, expiring URLs.
 *
 * Routes (the Worker's fetch handler delegates every /certificates/ path here):
 *
 *   PUT    /certificates/<key>?expires=<unix>&sig=<hex>   store the body (signed, body hash checked)
 *   GET    /certificates/<key>?expires=<unix>&sig=<hex>   stream the object (the download link)
 *   HEAD   /certificates/<key>?expires=<unix>&sig=<hex>   headers only (signed as GET)
 *   DELETE /certificates/<key>?expires=<unix>&sig=<hex>   remove the object
 *
 * sig = hex(HMAC-SHA256(secret, "<METHOD>\n<key>\n<expires>"[ + "\n<sha256 of body>" for PUT]))
 * keyed by the UTF-8 bytes of env.CERTIFICATE_SIGNING_SECRET (else env.CALLBACK_SECRET),
 * the same string providers/storage.py signs with. The signature is checked
 * first, with crypto.subtle.verify (a constant-time comparison), before the
 * request is otherwise read; a wrong, missing or expired signature is 403,
 * a missing object 404. Errors are JSON: {"error": "<code>"}.
 *
 * Bindings: CERTIFICATES (R2 bucket), CERTIFICATE_SIGNING_SECRET or CALLBACK_SECRET (secret).
 */

const PREFIX = "/certificates/";
const KEY_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]*(?:\/[A-Za-z0-9][A-Za-z0-9._-]*)*$/;
const MAX_KEY_LENGTH = 512;
const MAX_BODY_BYTES = 25 * 1024 * 1024;
/** Links may not outlive S3's own presign ceiling (7 days), plus clock slack. */
const MAX_LINK_SECONDS = 7 * 24 * 3600 + 300;
const METHODS = ["GET", "HEAD", "PUT", "DELETE"];

const encoder = new TextEncoder();
const keyCache = new Map();

/**
 * Handle one /certificates/<key> request.
 * @param {Request} request
 * @param {{CERTIFICATES: R2Bucket, CERTIFICATE_SIGNING_SECRET?: string, CALLBACK_SECRET?: string}} env
 * @returns {Promise<Response>}
 */
export async function handleCertificates(request, env) {
  const url = new URL(request.url);
  const method = request.method.toUpperCase();
  if (!METHODS.includes(method)) {
    return errorResponse(405, "method_not_allowed", { allow: METHODS.join(", ") });
  }
  const secret = env.CERTIFICATE_SIGNING_SECRET || env.CALLBACK_SECRET;
  if (!secret || !env.CERTIFICATES) {
    return errorResponse(503, "not_configured");
  }
  const key = parseKey(url.pathname);
  if (key === null) {
    return errorResponse(400, "bad_key");
  }
  const denied = await checkSignature(secret, method, key, url.searchParams, request.headers);
  if (denied) {
    return errorResponse(403, denied);
  }
  switch (method) {
    case "PUT":
      return putObject(request, env.CERTIFICATES, key);
    case "DELETE":
      await env.CERTIFICATES.delete(key);
      return new Response(null, { status: 204 });
    default:
      return getObject(env.CERTIFICATES, key, method === "HEAD");
  }
}

/** The object key in the path, or null when it is not a safe key. */
function parseKey(pathname) {
  if (!pathname.startsWith(PREFIX)) {
    return null;
  }
  let key;
  try {
    key = decodeURIComponent(pathname.slice(PREFIX.length));
  } catch {
    return null;
  }
  return key.length <= MAX_KEY_LENGTH && KEY_PATTERN.test(key) ? key : null;
}

/** The string the HMAC covers; see providers/storage.py signing_string(). */
export function signingString(method, key, expires, contentSha256 = "") {
  const parts = [method, key, String(expires)];
  if (contentSha256) {
    parts.push(contentSha256);
  }
  return parts.join("\n");
}

/**
 * Why the request's signature is refused, or "" when it is good.
 * HEAD is signed as GET, so a download link also answers HEAD.
 */
async function checkSignature(secret, method, key, params, headers) {
  const expires = params.get("expires") || "";
  const sig = (params.get("sig") || "").toLowerCase();
  if (!/^\d{1,12}$/.test(expires) || !/^[0-9a-f]{64}$/.test(sig)) {
    return "unsigned";
  }
  const signedMethod = method === "HEAD" ? "GET" : method;
  const contentSha256 = method === "PUT" ? (headers.get("x-content-sha256") || "").toLowerCase() : "";
  const message = encoder.encode(signingString(signedMethod, key, expires, contentSha256));
  const hmacKey = await importKey(secret);
  const valid = await crypto.subtle.verify("HMAC", hmacKey, hexToBytes(sig), message);
  if (!valid) {
    return "bad_signature";
  }
  const now = Math.floor(Date.now() / 1000);
  const at = Number(expires);
  if (at < now) {
    return "expired";
  }
  if (at > now + MAX_LINK_SECONDS) {
    return "expiry_too_far";
  }
  return "";
}

/** The HMAC-SHA256 CryptoKey for a secret, imported once per isolate. */
async function importKey(secret) {
  let key = keyCache.get(secret);
  if (!key) {
    key = await crypto.subtle.importKey(
      "raw", encoder.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["verify"]);
    keyCache.set(secret, key);
  }
  return key;
}

/** Store the request body after checking its size and its signed SHA-256. */
async function putObject(request, bucket, key) {
  const declared = Number(request.headers.get("content-length") || "0");
  if (declared > MAX_BODY_BYTES) {
    return errorResponse(413, "too_large");
  }
  const body = await request.arrayBuffer();
  if (body.byteLength > MAX_BODY_BYTES) {
    return errorResponse(413, "too_large");
  }
  const expected = (request.headers.get("x-content-sha256") || "").toLowerCase();
  if (bytesToHex(new Uint8Array(await crypto.subtle.digest("SHA-256", body))) !== expected) {
    return errorResponse(400, "content_sha256_mismatch");
  }
  const contentType = headerValue(request.headers.get("content-type")) || "application/octet-stream";
  const stored = await bucket.put(key, body, { httpMetadata: { contentType }, sha256: expected });
  return jsonResponse(201, { key, size: stored.size, etag: stored.etag });
}

/** Stream the object (or only its headers for HEAD); 404 when missing. */
async function getObject(bucket, key, headOnly) {
  const object = headOnly ? await bucket.head(key) : await bucket.get(key);
  if (object === null) {
    return errorResponse(404, "not_found");
  }
  const filename = key.slice(key.lastIndexOf("/") + 1);
  const headers = new Headers({
    "content-type": object.httpMetadata?.contentType || "application/octet-stream",
    "content-disposition": `attachment; filename="${filename}"`,
    "content-length": String(object.size),
    etag: object.httpEtag,
    "cache-control": "private, no-store",
    "x-content-type-options": "nosniff",
  });
  return new Response(headOnly ? null : object.body, { status: 200, headers });
}

/** A header value fit to store: printable, bounded, or "" when not. */
function headerValue(value) {
  return value && value.length <= 200 && /^[\x20-\x7e]+$/.test(value) ? value : "";
}

function hexToBytes(hex) {
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i += 1) {
    bytes[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  }
  return bytes;
}

function bytesToHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function jsonResponse(status, body, headers = {}) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

function errorResponse(status, code, headers = {}) {
  return jsonResponse(status, { error: code }, headers);
}
