/* Cloud Offload dashboard: live job list and job detail.
 *
 * Polls the page's JSON endpoint (data-poll-url) every few seconds and
 * updates the rows in place; the page itself is never reloaded. Values are
 * written with textContent only, never as HTML.
 */
(function () {
  "use strict";

  function text(el, value) {
    if (el && el.textContent !== String(value)) { el.textContent = String(value); }
  }

  function clock() {
    var d = new Date();
    return d.toLocaleTimeString();
  }

  function setBadge(el, row) {
    if (!el) { return; }
    el.className = "badge status-badge badge-" + row.badge;
    text(el, row.status_label);
  }

  function setProgress(box, p) {
    if (!box) { return; }
    var bar = box.querySelector(".progress");
    if (bar) { bar.setAttribute("aria-valuenow", p.percent); }
    var parts = { sent: p.sent_pct, failed: p.failed_pct, skipped: p.skipped_pct };
    Object.keys(parts).forEach(function (name) {
      var seg = box.querySelector('[data-part="' + name + '"]');
      if (seg) { seg.style.width = parts[name] + "%"; }
    });
    text(box.querySelector('[data-part="text"]'), p.percent + "%");
  }

  function fill(scope, row) {
    ["type", "company", "emails_sent", "emails_failed", "emails_bounced", "email_count", "emails_suppressed", "created",
      "started", "completed", "duration", "waiting_text", "eta"].forEach(function (name) {
      var el = scope.querySelector('[data-field="' + name + '"]');
      if (el && row[name] !== undefined) {
        text(el, name === "type" ? row.type_label : (name === "created" && scope.id === "job-detail" ? row[name] + " UTC" : row[name]));
      }
    });
    scope.querySelectorAll('time[data-field="starts_at"]').forEach(function (el) {  /* static/time.js */
      if (window.OffloadTime) { window.OffloadTime.set(el, row.starts_at, row.starts_at_utc); }
    });
    setBadge(scope.querySelector('[data-field="status"]'), row);
    setProgress(scope.querySelector('[data-field="progress"]'), row.progress);
    if (scope.id !== "job-detail") {  /* the list: the ETA line shows while there is one */
      scope.querySelectorAll("[data-show-if]").forEach(function (el) {
        el.hidden = !row[el.getAttribute("data-show-if")];
      });
    }
  }

  function poll(url, interval, onData, shouldStop) {
    var timer = null;
    var failures = 0;
    function tick() {
      if (document.hidden) { timer = setTimeout(tick, interval); return; }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" }, cache: "no-store" })
        .then(function (resp) {
          if (!resp.ok || (resp.headers.get("Content-Type") || "").indexOf("json") < 0) {
            throw new Error("HTTP " + resp.status);
          }
          return resp.json();
        })
        .then(function (data) {
          failures = 0;
          onData(data);
          if (!shouldStop(data)) { timer = setTimeout(tick, interval); }
        })
        .catch(function () {
          failures += 1;
          timer = setTimeout(tick, Math.min(interval * Math.pow(2, failures), 60000));
        });
    }
    timer = setTimeout(tick, interval);
    return function () { clearTimeout(timer); };
  }

  /* ---- the job list ---- */
  function jobList(table) {
    var tbody = table.querySelector("tbody");
    var template = document.getElementById("job-row-template");
    var page = parseInt(table.getAttribute("data-page") || "1", 10);
    var interval = parseInt(table.getAttribute("data-interval") || "3000", 10);

    function rowFor(job) {
      var tr = tbody.querySelector('tr[data-job-id="' + job.id + '"]');
      if (tr || page !== 1 || !template) { return tr; }
      tr = template.content.firstElementChild.cloneNode(true);
      tr.setAttribute("data-job-id", job.id);
      var link = tr.querySelector(".job-link");
      link.href = job.url;
      link.textContent = "#" + job.id;
      var empty = tbody.querySelector(".empty-row");
      if (empty) { empty.remove(); }
      tbody.insertBefore(tr, tbody.firstChild);
      tr.classList.add("row-new");
      return tr;
    }

    poll(table.getAttribute("data-poll-url"), interval, function (data) {
      data.jobs.slice().reverse().forEach(function (job) {
        var tr = rowFor(job);
        if (tr) { fill(tr, job); }
      });
      text(document.getElementById("jobs-total"), data.total);
      text(document.getElementById("jobs-updated"), "Updated " + clock());
    }, function () { return false; });
  }

  /* ---- one job ---- */
  function jobDetail(box) {
    var interval = parseInt(box.getAttribute("data-interval") || "2000", 10);
    var failedAtLoad = box.getAttribute("data-failed");
    var wasFinal = box.getAttribute("data-final") === "1";

    function batches(list) {
      var tbody = document.querySelector("#batches-table tbody");
      if (!tbody) { return; }
      list.forEach(function (b) {
        var tr = tbody.querySelector('tr[data-batch="' + b.number + '"]');
        if (!tr) {
          var empty = tbody.querySelector(".empty-row");
          if (empty) { empty.remove(); }
          tr = document.createElement("tr");
          tr.setAttribute("data-batch", b.number);
          [["#", "number"], ["State", "status"], ["Route", "route"], ["Recipients", "count"], ["Sent", "sent"],
            ["Failed", "failed"], ["Attempts", "attempts"]].forEach(function (col, i) {
            var td = document.createElement("td");
            td.setAttribute("data-label", col[0]);
            if (i >= 3) { td.className = "text-right num"; }
            if (col[1] === "count" || col[1] === "attempts") { td.className += " d-none d-sm-table-cell"; }
            if (col[1] === "status") {
              var badge = document.createElement("span");
              badge.setAttribute("data-field", "status");
              td.appendChild(badge);
            } else {
              td.setAttribute("data-field", col[1]);
            }
            tr.appendChild(td);
          });
          tbody.appendChild(tr);
        }
        text(tr.querySelector('[data-field="number"]'), b.number);
        var badge = tr.querySelector('[data-field="status"]');
        badge.className = "badge badge-light batch-" + b.status;
        text(badge, b.status_label);
        text(tr.querySelector('[data-field="route"]'), b.route_label || "—");
        ["count", "sent", "failed", "attempts"].forEach(function (f) {
          text(tr.querySelector('[data-field="' + f + '"]'), b[f]);
        });
      });
    }

    function render(job) {
      fill(box, job);
      text(box.querySelector('[data-field="success_rate"]'),
        job.progress.success_rate === null ? "—" : job.progress.success_rate.toFixed(1) + "%");
      box.querySelectorAll("[data-show-if]").forEach(function (el) {
        el.hidden = !job[el.getAttribute("data-show-if")];
      });
      batches(job.batches || []);
      var rates = job.rates, shown = box.querySelector(".rates");
      if (rates && shown) {  /* the job's bounce and complaint rates (admin/_rates.html) follow its counts */
        text(shown.querySelector('[data-field="bounce_rate"]'), (rates.bounce_rate * 100).toFixed(2) + "%");
        text(shown.querySelector('[data-field="complaint_rate"]'), (rates.complaint_rate * 100).toFixed(2) + "%");
        ["bounces", "soft_bounces", "complaints"].forEach(function (f) {
          text(shown.querySelector('[data-field="' + f + '"]'), rates[f]);
        });
        text(shown.querySelector('[data-field="handed"]'), rates.sent);
      }
      /* the "Not delivered" heading counts as the figures above it do; its list waits for a reload */
      text(document.querySelector('#failed [data-count="failed"]'), job.emails_failed);
      text(document.querySelector('#failed [data-count="bounced"]'), job.emails_bounced);
      if (String(job.emails_failed + job.emails_bounced) !== failedAtLoad && job.is_final) {
        var stale = document.getElementById("failed-stale");
        if (stale) { stale.hidden = false; }
      }
      text(document.getElementById("job-updated"), job.is_final ? "Finished" : "Updated " + clock());
      if (window.OffloadChart) { window.OffloadChart.reload(job.is_final); }  // the last one always redraws
    }

    if (!wasFinal) {
      poll(box.getAttribute("data-poll-url"), interval, render, function (job) { return job.is_final; });
    }
  }

  var table = document.getElementById("jobs-table");
  if (table) { jobList(table); }
  var detail = document.getElementById("job-detail");
  if (detail) { jobDetail(detail); }
  window.OffloadJobs = { poll: poll };
}());
