/* Forms: a field that applies to one target only is hidden while another is picked, and a
   form sent back with errors opens on its summary of them. */
"use strict";
(() => {
  document.querySelectorAll("form").forEach((form) => {
    const target = form.querySelector('select[name$="target"]');
    const only = form.querySelectorAll("[data-for-target]");
    if (!target || !only.length) return;
    const show = () => only.forEach((field) => { field.hidden = field.dataset.forTarget !== target.value; });
    target.addEventListener("change", show);
    show();
  });
  const summary = document.getElementById("error-summary");
  if (summary) {
    summary.scrollIntoView({block: "start"});
    summary.focus({preventScroll: true});
  }
})();
