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
/* A button with data-copy copies its element's text (a form with data-confirm asks first:
   pages.js, on every page). */
(() => {
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
/* A table.sortable sorts by the column whose heading is clicked (again: the other way). */
(() => {
  document.querySelectorAll("table.sortable").forEach((table) => {
    table.querySelectorAll("th[data-sort]").forEach((th, column) => {
      th.style.cursor = "pointer";
      th.addEventListener("click", () => {
        const numeric = th.dataset.sort === "number";
        const down = th.dataset.dir !== "desc";
        table.querySelectorAll("th[data-sort]").forEach((other) => { delete other.dataset.dir; });
        th.dataset.dir = down ? "desc" : "asc";
        const index = [...th.parentElement.children].indexOf(th);
        const key = (row) => {
          const cell = row.cells[index];
          const raw = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent.trim();
          return numeric ? parseFloat(raw) : raw;
        };
        const rows = [...table.tBodies[0].rows];
        rows.sort((a, b) => {
          const x = key(a), y = key(b);
          const order = numeric ? x - y : String(x).localeCompare(String(y));
          return down ? -order : order;
        });
        rows.forEach((row) => table.tBodies[0].append(row));
      });
    });
  });
})();
