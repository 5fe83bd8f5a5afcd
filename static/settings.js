/* Cloud Offload dashboard: "Test connection" and "Send test email".
 *
 * The form is posted with fetch (its CSRF token travels in the form data);
 * the answer names a result URL, polled until the worker has stored the
 * outcome. Everything is written with textContent, never as HTML.
 */
(function () {
  "use strict";
  var box = document.getElementById("check-result");
  if (!box) { return; }
  var stopPolling = null;

  function node(tag, cls, value) {
    var el = document.createElement(tag);
    if (cls) { el.className = cls; }
    if (value !== undefined) { el.textContent = String(value); }
    return el;
  }

  function clear() { while (box.firstChild) { box.removeChild(box.firstChild); } }

  function show(cls, message) {
    clear();
    box.appendChild(node("div", "alert py-2 small mb-0 alert-" + cls, message));
  }

  function factText(value) {
    if (value === null || value === undefined) { return "—"; }
    if (typeof value === "object") {
      return Object.keys(value).map(function (k) { return value[k] === "" ? k : k + " " + value[k]; }).join(", ");
    }
    return String(value);
  }

  function renderCheck(check) {
    var card = node("div", "mb-2");
    var head = node("div", check.ok ? "check-ok" : "check-bad");
    head.appendChild(node("strong", "", (check.ok ? "✓ " : "✗ ") + check.name));
    if (check.seconds !== undefined) { head.appendChild(node("span", "text-muted small", " " + check.seconds + " s")); }
    card.appendChild(head);
    if (check.error) { card.appendChild(node("div", "small text-danger", check.error)); }
    var facts = check.facts || {};
    var keys = Object.keys(facts);
    if (keys.length) {
      var dl = node("dl", "row small mb-1");
      keys.forEach(function (k) {
        dl.appendChild(node("dt", "col-5 font-weight-normal text-muted", k.replace(/_/g, " ")));
        dl.appendChild(node("dd", "col-7 mb-0 text-break", factText(facts[k])));
      });
      card.appendChild(dl);
    }
    (check.notes || []).forEach(function (note) {
      card.appendChild(node("div", "small text-warning-emphasis note", "Note: " + note));
    });
    return card;
  }

  function render(result) {
    clear();
    if (result.status === "pending") {
      box.appendChild(node("div", "small text-muted", result.kind === "email" ? "Sending the test email…" : "Testing the connection…"));
      return;
    }
    if (result.kind === "email") {
      show(result.ok ? "success" : "danger",
        result.ok ? "Test email sent" + (result.message_id ? " (message id " + result.message_id + ")" : "") + "."
          : "Test email failed: " + (result.error || "unknown error"));
      return;
    }
    var summary = node("div", "alert py-2 small alert-" + (result.ok ? "success" : "warning"),
      result.ok ? "Connection test passed." : "Connection test found problems.");
    box.appendChild(summary);
    (result.checks || []).forEach(function (check) { box.appendChild(renderCheck(check)); });
  }

  function follow(url) {
    if (stopPolling) { stopPolling(); }
    var stopped = false;
    var tries = 0;
    function tick() {
      if (stopped) { return; }
      tries += 1;
      fetch(url, { credentials: "same-origin", cache: "no-store" })
        .then(function (r) {
          if (r.status === 404) { throw new Error("expired"); }
          if (!r.ok) { throw new Error("HTTP " + r.status); }
          return r.json();
        })
        .then(function (result) {
          render(result);
          if (result.status === "pending" && tries < 180) { setTimeout(tick, 1000); }
        })
        .catch(function (err) {
          if (err.message === "expired") { show("secondary", "This check result has expired."); return; }
          if (tries < 180) { setTimeout(tick, 2000); }
        });
    }
    tick();
    stopPolling = function () { stopped = true; };
  }

  document.querySelectorAll("form[data-check-form]").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      show("light", "Queued…");
      fetch(form.action, { method: "POST", body: new FormData(form), credentials: "same-origin",
        headers: { "Accept": "application/json" } })
        .then(function (r) { return r.json().then(function (body) { return { ok: r.ok, body: body }; }); })
        .then(function (answer) {
          if (!answer.ok) { show("danger", answer.body.error || "The request was refused."); return; }
          follow(answer.body.result_url);
        })
        .catch(function () { show("danger", "The request failed; try again."); });
    });
  });

  if (box.getAttribute("data-result-url")) { follow(box.getAttribute("data-result-url")); }
}());
