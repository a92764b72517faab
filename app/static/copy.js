// Copy buttons: <button type="button" class="copy" data-copy-target="ID" hidden>Copy</button> copies the text of
// element ID (or the value of an input) to the clipboard. Served from 'self' (the CSP allows no inline script); the
// buttons stay hidden without script, and the text can always be selected by hand.
(function () {
  "use strict";

  function textOf(el) {
    return (el.value !== undefined && el.tagName === "INPUT") ? el.value : el.textContent;
  }

  function fallbackCopy(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "copy-scratch";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    document.body.removeChild(area);
    return ok;
  }

  function done(button, ok) {
    var label = button.dataset.label || button.textContent;
    button.dataset.label = label;
    button.textContent = ok ? "Copied" : "Select and copy by hand";
    window.setTimeout(function () { button.textContent = label; }, 2000);
  }

  function copy(button) {
    var target = document.getElementById(button.dataset.copyTarget || "");
    if (!target) { return; }
    var text = textOf(target).trim();
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { done(button, true); },
                                               function () { done(button, fallbackCopy(text)); });
    } else {
      done(button, fallbackCopy(text));
    }
  }

  function init() {
    var buttons = document.querySelectorAll("button.copy[data-copy-target]");
    Array.prototype.forEach.call(buttons, function (button) {
      button.hidden = false;
      button.addEventListener("click", function () { copy(button); });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
}());
