// What each page starts, read from its markup (the Content-Security-Policy allows no inline
// script): data-watch, data-dashboard, data-usage, data-planner, data-confirm, data-autosubmit
// and the token copy button.
(() => {
  function start() {
    const list = document.querySelector("[data-watch=list]");
    if (list) Portal.watchList(list);
    const job = document.querySelector("[data-watch=job]");
    if (job) Portal.watchJob(job);
    const board = document.querySelector("[data-dashboard]");
    if (board && board.dataset.dashboard === "cluster") {
      Dashboard.cluster({staff: board.dataset.staff === "true"});
    } else if (board && board.dataset.dashboard === "node") {
      Dashboard.node(board);
    }
    const feed = document.querySelector("[data-feed=live]");
    if (feed) Dashboard.events(feed);
    const usage = document.querySelector("[data-usage]");
    if (usage) Usage.page(usage.dataset.usage);
    if (document.querySelector("[data-planner]")) Usage.planner();
    for (const form of document.querySelectorAll("form[data-confirm]")) {
      form.addEventListener("submit", (event) => {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    }
    for (const button of document.querySelectorAll("button[data-confirm]")) {
      button.addEventListener("click", (event) => {
        if (!window.confirm(button.dataset.confirm)) event.preventDefault();
      });
    }
    for (const select of document.querySelectorAll("select[data-autosubmit]")) {
      select.addEventListener("change", () => select.form.submit());
    }
    copyButton(document.getElementById("copy-key"), document.getElementById("new-key"));
  }

  function copyButton(button, input) {
    if (!button || !input) return;
    input.addEventListener("focus", () => input.select());
    button.addEventListener("click", () => {
      input.select();
      const done = () => { button.textContent = "Copied"; };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(input.value).then(done, () => {
          document.execCommand("copy");
          done();
        });
      } else {
        document.execCommand("copy");
        done();
      }
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
