/* Cloud Offload dashboard: the certificate template form's live preview. */
(function () {
  // Live preview: post the form (with its CSRF token) after typing pauses; show the PNG it returns.
  var form = document.getElementById("certificate-template-form");
  var img = document.getElementById("certificate-preview");
  var status = document.getElementById("certificate-preview-status");
  var timer = null, seq = 0, shown = null;
  function say(text, cls) { status.textContent = text; status.className = "small " + cls; }
  function refresh() {
    var mine = ++seq;
    say("Rendering…", "text-muted");
    fetch(form.dataset.previewUrl, {method: "POST", body: new FormData(form), credentials: "same-origin"})
      .then(function (resp) {
        if (mine !== seq) { return null; }
        if (!resp.ok) { return resp.text().then(function (t) { say(t || "Preview failed", "text-danger"); return null; }); }
        return resp.blob();
      })
      .then(function (blob) {
        if (!blob || mine !== seq) { return; }
        if (shown) { URL.revokeObjectURL(shown); }
        shown = URL.createObjectURL(blob);
        img.src = shown;
        say("Up to date", "text-muted");
      })
      .catch(function () { say("Preview unavailable", "text-danger"); });
  }
  form.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(refresh, 600); });
  form.addEventListener("change", function (e) { if (e.target.type === "file" || e.target.type === "checkbox") { refresh(); } });
  if (!img.getAttribute("src")) { refresh(); }
})();
