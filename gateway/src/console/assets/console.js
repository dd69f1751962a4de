// The overview's live table: polls the console's own JSON every two seconds and turns each
// tenant's service-token counter into tokens per second. Nothing else on the console needs
// script; without it the pages still work, only not live.
"use strict";
(function () {
  const table = document.getElementById("live-tenants");
  if (!table) return;
  const source = table.dataset.source;
  const status = document.getElementById("live-status");
  let previous = null;
  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text;
    return td;
  }
  function render(figures) {
    const body = table.tBodies[0];
    const rows = [];
    for (const t of figures.tenants) {
      const key = t.model + "\u0000" + t.tenant;
      let rate = "–";
      if (previous && previous.tokens.has(key)) {
        const seconds = (figures.at_ms - previous.at_ms) / 1000;
        if (seconds > 0) rate = ((t.service_tokens - previous.tokens.get(key)) / seconds).toFixed(1);
      }
      const tr = document.createElement("tr");
      tr.dataset.tenant = t.tenant;
      for (const v of [t.tenant, t.model, t.running, t.waiting, t.waiting_at_gateway, rate]) {
        tr.appendChild(cell(String(v)));
      }
      rows.push(tr);
    }
    if (rows.length === 0) {
      const tr = document.createElement("tr");
      const td = cell("No tenant has used a model on this replica yet.");
      td.colSpan = 6;
      tr.appendChild(td);
      rows.push(tr);
    }
    body.replaceChildren(...rows);
    previous = {
      at_ms: figures.at_ms,
      tokens: new Map(figures.tenants.map((t) => [t.model + "\u0000" + t.tenant, t.service_tokens])),
    };
    status.textContent = "updated " + new Date(figures.at_ms).toLocaleTimeString();
  }
  async function poll() {
    try {
      const response = await fetch(source, { credentials: "same-origin", cache: "no-store" });
      if (response.status === 401) {
        window.location.assign("/console/sign-in");
        return;
      }
      if (response.ok) render(await response.json());
    } catch (e) {
      status.textContent = "not updated: " + e;
    }
    setTimeout(poll, 2000);
  }
  poll();
})();
