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
/* A form with data-confirm asks first; a button with data-copy copies its element's text. */
(() => {
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => { if (!window.confirm(form.dataset.confirm)) event.preventDefault(); });
  });
  document.querySelectorAll("button[data-copy]").forEach((button) => {
    button.addEventListener("click", () => {
      const source = document.getElementById(button.dataset.copy);
      const text = source.value !== undefined ? source.value : source.textContent;
      const done = () => { button.textContent = "Copied"; setTimeout(() => { button.textContent = "Copy"; }, 1500); };
      if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).then(done, () => {});
      else {
        const range = document.createRange();
        range.selectNodeContents(source);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        document.execCommand("copy");
        done();
      }
    });
  });
})();
