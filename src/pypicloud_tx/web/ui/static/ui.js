// pypicloud-tx web interface: small conveniences on top of pages that work without script.
(function () {
  "use strict";
  // pypicloud's sign-up links read /login#/?token=...: carry the token on to /register.
  var match = /[#&?]token=([^&]+)/.exec(window.location.hash || "");
  if (/\/login$/.test(window.location.pathname) && match) {
    window.location.replace("register?token=" + match[1]);
    return;
  }
  document.addEventListener("DOMContentLoaded", function () {
    // Copy buttons on command snippets (clipboard access needs a secure context).
    if (!navigator.clipboard) {
      return;
    }
    document.querySelectorAll("button.copy[data-copy]").forEach(function (button) {
      var target = document.getElementById(button.getAttribute("data-copy"));
      if (!target) {
        return;
      }
      button.hidden = false;
      button.addEventListener("click", function () {
        navigator.clipboard.writeText(target.textContent).then(function () {
          button.textContent = "Copied";
          window.setTimeout(function () { button.textContent = "Copy"; }, 1500);
        });
      });
    });
  });
})();
