/* Cloud Offload dashboard, the settings page.
 *
 * "Test connection", each provider section's "Test ...", "Send test email":
 * the form is posted with fetch (its CSRF token travels in the form data);
 * the answer names a result URL, polled until the worker has stored the
 * outcome, shown in the box the form names (data-result), beside its button.
 * Everything is written with textContent, never as HTML.
 *
 * Choosing a provider opens its section and closes the other providers'
 * (data-provider-group, data-senders); a link to a closed section opens it.
 */
(function () {
  "use strict";
  var main = document.getElementById("check-result");
  if (!main) { return; }

  function checkBox(box) {
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
      if (check.error) {
        var why = node("div", "small text-danger check-error", check.error);
        if (check.fix && check.field_label) {  /* the setting to fix: its section opens (hashchange) */
          var link = node("a", "ml-1 check-fix", "Fix: " + check.field_label);
          link.setAttribute("href", check.fix);
          why.appendChild(document.createTextNode(" "));
          why.appendChild(link);
        }
        card.appendChild(why);
      }
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

    return { show: show, follow: follow };
  }

  var boxes = {};
  function boxFor(form) {
    var selector = form.getAttribute("data-result") || "#check-result";
    if (!boxes[selector]) { boxes[selector] = checkBox(document.querySelector(selector) || main); }
    return boxes[selector];
  }

  document.querySelectorAll("form[data-check-form]").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var box = boxFor(form);
      box.show("light", "Queued…");
      fetch(form.action, { method: "POST", body: new FormData(form), credentials: "same-origin",
        headers: { "Accept": "application/json" } })
        .then(function (r) { return r.json().then(function (body) { return { ok: r.ok, body: body }; }); })
        .then(function (answer) {
          if (!answer.ok) { box.show("danger", answer.body.error || "The request was refused."); return; }
          box.follow(answer.body.result_url);
        })
        .catch(function () { box.show("danger", "The request failed; try again."); });
    });
  });

  if (main.getAttribute("data-result-url")) {  /* the page after a check posted without the script */
    boxes["#check-result"] = checkBox(main);
    boxes["#check-result"].follow(main.getAttribute("data-result-url"));
  }

  /* the provider chosen (not yet saved) shows its section; the other providers' close */
  var provider = document.getElementById("f-provider");
  if (provider) {
    provider.addEventListener("change", function () {
      document.querySelectorAll("details[data-provider-group]").forEach(function (section) {
        section.open = (" " + section.getAttribute("data-senders") + " ").indexOf(" " + provider.value + " ") >= 0;
      });
    });
  }

  /* a link to a section (the nav, the checklist) opens it */
  function openTarget() {
    var id = window.location.hash.slice(1);
    var target = id && document.getElementById(id);
    var details = target && (target.tagName === "DETAILS" ? target : target.closest("details"));
    if (details && !details.open) { details.open = true; target.scrollIntoView(); }
    if (target && target.tagName !== "DETAILS" && target.focus) { target.focus(); }  /* a "Fix:" link */
  }
  window.addEventListener("hashchange", openTarget);
  openTarget();
}());
