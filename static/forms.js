/* Cloud Offload dashboard: after a failed save, bring the first error into
 * view and put the cursor in its field (settings forms mark the field with
 * .is-invalid; Flask-Admin forms too). */
(function () {
  "use strict";
  function firstError() {
    var field = document.querySelector("form .is-invalid, .form-group.has-error input, .form-group.has-error select");
    if (field) { return field; }
    var message = document.querySelector("[data-error-for], .invalid-feedback.d-block");
    return message;
  }
  function focusFirstError() {
    var target = firstError();
    if (!target) { return; }
    var group = target.closest(".form-group") || target;
    group.scrollIntoView({block: "center"});
    var input = target.matches("input, select, textarea") ? target :
      group.querySelector("input:not([type=hidden]), select, textarea");
    if (input) { input.focus({preventScroll: true}); }
  }
  // after the load, so the browser's own jump to the URL's #fragment does not undo the centring
  if (document.readyState === "complete") {
    focusFirstError();
  } else {
    window.addEventListener("load", function () { window.requestAnimationFrame(focusFirstError); });
  }
}());
