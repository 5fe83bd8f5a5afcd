/* Cloud Offload dashboard, on every page: the behaviour the pages declare in
 * data attributes (no page has an inline script or on*= handler; the CSP
 * allows scripts from files only):
 *   form[data-confirm]        asks before the form is submitted
 *   [data-confirm-click]      asks before the click goes on (Flask-Admin's delete buttons)
 *   a[data-noop]              a link that only opens a menu: the click goes nowhere
 *   [data-model-action]       runs a Flask-Admin list action on the ticked rows
 *   [data-add-inline]         adds a Flask-Admin inline form
 * and, after a failed save, brings the first error into view with the cursor in
 * its field; a result placed next to the button that caused it is brought into view. */
(function () {
  "use strict";

  document.addEventListener("submit", function (ev) {
    var message = ev.target.getAttribute && ev.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) { ev.preventDefault(); ev.stopImmediatePropagation(); }
  }, true);

  document.addEventListener("click", function (ev) {
    var el = ev.target.closest ? ev.target.closest("[data-confirm-click], a[data-noop], [data-model-action], [data-add-inline]") : null;
    if (!el) { return; }
    if (el.hasAttribute("data-confirm-click")) {
      if (!window.confirm(el.getAttribute("data-confirm-click"))) { ev.preventDefault(); }
      return;
    }
    if (el.hasAttribute("data-model-action")) {
      ev.preventDefault();
      if (window.modelActions) { window.modelActions.execute(el.getAttribute("data-model-action")); }
      return;
    }
    if (el.hasAttribute("data-add-inline")) {
      ev.preventDefault();
      if (window.faForm) { window.faForm.addInlineField(el, el.getAttribute("data-add-inline")); }
      return;
    }
    if (el.matches("a[data-noop]")) { ev.preventDefault(); }
  });

  function firstError() {
    var field = document.querySelector("form .is-invalid, .form-group.has-error input, .form-group.has-error select");
    if (field) { return field; }
    return document.querySelector("[data-error-for], .invalid-feedback.d-block");
  }
  function focusFirstError() {
    var target = firstError();
    if (!target) { return false; }
    var group = target.closest(".form-group") || target;
    var details = group.closest("details");
    if (details) { details.open = true; }
    group.scrollIntoView({block: "center"});
    var input = target.matches("input, select, textarea") ? target :
      group.querySelector("input:not([type=hidden]), select, textarea");
    if (input) { input.focus({preventScroll: true}); }
    return true;
  }
  function showResult() {
    var result = document.querySelector("[data-result-for]");
    if (!result) { return; }
    var details = result.closest("details");
    if (details) { details.open = true; }
    result.scrollIntoView({block: "center"});
  }
  function settle() {
    if (!focusFirstError()) { showResult(); }
  }
  // after the load, so the browser's own jump to the URL's #fragment does not undo the centring
  if (document.readyState === "complete") {
    settle();
  } else {
    window.addEventListener("load", function () { window.requestAnimationFrame(settle); });
  }
}());
