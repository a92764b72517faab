// "Select all on this page" for the lists with bulk actions: <input type="checkbox" data-select-all="FORM"> ticks
// or clears every row box of that form (input[name=ids][form=FORM]) and shows when only some are ticked. Served
// from 'self' (the CSP allows no inline script); its label stays hidden without script, and rows can be ticked one
// by one as before.
(function () {
  "use strict";

  function rows(formId) {
    return Array.prototype.slice.call(
      document.querySelectorAll('input[type="checkbox"][name="ids"][form="' + formId + '"]'));
  }

  function sync(all, boxes) {
    var ticked = boxes.filter(function (b) { return b.checked; }).length;
    all.checked = boxes.length > 0 && ticked === boxes.length;
    all.indeterminate = ticked > 0 && ticked < boxes.length;
  }

  function init() {
    var alls = document.querySelectorAll('input[type="checkbox"][data-select-all]');
    Array.prototype.forEach.call(alls, function (all) {
      var boxes = rows(all.dataset.selectAll);
      if (!boxes.length) { return; }
      var label = all.closest("label");
      if (label) { label.hidden = false; }
      all.addEventListener("change", function () {
        boxes.forEach(function (b) { b.checked = all.checked; });
        all.indeterminate = false;
      });
      boxes.forEach(function (b) { b.addEventListener("change", function () { sync(all, boxes); }); });
      sync(all, boxes);
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
}());
