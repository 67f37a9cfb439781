// ethereal console: live numbers, charts, and the forms that call the admin API.
// The session cookie is HttpOnly; changes carry the page's CSRF token in x-csrf-token.
"use strict";
(function () {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : "";
  const base = (document.querySelector('link[rel="stylesheet"]').getAttribute("href") || "").replace(/\/static\/console\.css$/, "");
  const flash = document.getElementById("flash");

  function say(text, bad) {
    if (!flash) return;
    flash.textContent = text;
    flash.className = bad ? "bad" : "";
  }

  async function api(method, url, body) {
    const opts = { method, credentials: "same-origin", headers: { "x-csrf-token": csrf } };
    if (body !== undefined) {
      opts.headers["content-type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const resp = await fetch(url, opts);
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) {
      const msg = data && data.error ? data.error.message : "HTTP " + resp.status;
      throw new Error(msg);
    }
    return data;
  }

  // A form's fields as the admin API's JSON: data-type int/float/list, data-nullable (empty → null),
  // data-omit-empty (empty → left out), data-micro=NAME (dollars → integer micro-USD under NAME).
  function formJSON(form) {
    const out = {};
    for (const el of form.elements) {
      if (!el.name || el.type === "submit") continue;
      let v = el.value.trim();
      const name = el.dataset.micro || el.name;
      if (v === "") {
        if (el.hasAttribute("data-nullable")) out[name] = null;
        else if (el.tagName === "SELECT" && el.name === "plan") continue;
        else if (el.dataset.type || el.hasAttribute("data-omit-empty")) continue;
        else out[name] = "";
        continue;
      }
      if (el.dataset.type === "int") v = parseInt(v, 10);
      else if (el.dataset.type === "float") v = parseFloat(v);
      else if (el.dataset.type === "list") v = v.split(",").map(s => s.trim()).filter(Boolean);
      if (el.dataset.micro) v = Math.round(v * 1e6);
      out[name] = v;
    }
    return out;
  }

  // Generic admin-API forms: data-api="METHOD URL", optional data-confirm.
  document.querySelectorAll("form[data-api]").forEach(form => {
    form.addEventListener("submit", async ev => {
      ev.preventDefault();
      const [method, url] = form.dataset.api.split(" ");
      if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
      const body = method === "DELETE" ? undefined : formJSON(form);
      try {
        await api(method, url, body);
        say("Saved.");
        window.location.reload();
      } catch (e) { say(e.message, true); }
    });
  });

  // Spend limits (the Limits page): the Admin API's shape, a cap in dollars sent as whole cents.
  document.querySelectorAll("form[data-spend-limit]").forEach(form => {
    form.addEventListener("submit", async ev => {
      ev.preventDefault();
      const f = form.elements;
      let scope;
      if (form.dataset.scope) scope = JSON.parse(form.dataset.scope);
      else {
        const type = f.scope_type.value, id = f.scope_id.value.trim();
        scope = { type };
        const field = { user: "user_id", rbac_group: "rbac_group_id", api_key: "api_key_id" }[type];
        if (field) scope[field] = id;
      }
      const usd = f.amount_usd.value.trim();
      const body = {
        amount: usd === "" ? null : String(Math.round(parseFloat(usd) * 100)),
        period: form.dataset.period || f.period.value,
        scope,
      };
      const shared = form.dataset.shared ? form.dataset.shared === "true" : (f.shared && f.shared.checked);
      if (shared) body.shared = true;
      try {
        await api("POST", form.dataset.spendLimit, body);
        say("Saved.");
        window.location.reload();
      } catch (e) { say(e.message, true); }
    });
  });

  // Webhooks: the generated secret is shown once, here.
  const hook = document.getElementById("webhook");
  if (hook) {
    hook.addEventListener("submit", async ev => {
      ev.preventDefault();
      const body = formJSON(hook);
      for (const k of Object.keys(body)) if (body[k] === "") delete body[k];
      try {
        const made = await api("POST", hook.dataset.webhook, body);
        const shown = document.getElementById("webhook-secret");
        shown.textContent = "Signing secret of " + made.id + " (copy it now, it is not shown again): " + made.secret;
        shown.hidden = false;
        say("Webhook added.");
      } catch (e) { say(e.message, true); }
    });
  }

  // Minting: plaintext keys shown once, with copy and CSV download.
  const mint = document.getElementById("mint");
  if (mint) {
    let minted = [];
    mint.addEventListener("submit", async ev => {
      ev.preventDefault();
      const body = formJSON(mint);
      for (const k of Object.keys(body)) if (body[k] === "") delete body[k];
      try {
        const data = await api("POST", mint.dataset.mint, body);
        minted = data.data;
        const rows = document.getElementById("minted-rows");
        rows.textContent = "";
        for (const k of minted) {
          const tr = document.createElement("tr");
          const id = document.createElement("td"); id.textContent = k.id;
          const key = document.createElement("td"); const code = document.createElement("code");
          code.textContent = k.key; code.className = "plaintext"; key.appendChild(code);
          const act = document.createElement("td"); const btn = document.createElement("button");
          btn.type = "button"; btn.textContent = "Copy"; btn.setAttribute("aria-label", "Copy key " + k.id);
          btn.addEventListener("click", () => copy(k.key));
          act.appendChild(btn);
          tr.append(id, key, act); rows.appendChild(tr);
        }
        fillSnippets(minted.length ? minted[0].key : "<key>");
        document.getElementById("minted").hidden = false;
        say("Minted " + minted.length + " key(s). Copy them now: they are not shown again.");
      } catch (e) { say(e.message, true); }
    });
    document.getElementById("copy-all").addEventListener("click", () => copy(minted.map(k => k.key).join("\n")));
    // Each tool's set-up (python/ethereal/connect.py, rendered by the server with <key> in place)
    // with the first minted key filled in.
    const snippets = document.querySelectorAll("code[data-snippet]");
    snippets.forEach(code => { code.dataset.template = code.textContent; });
    function fillSnippets(key) {
      snippets.forEach(code => { code.textContent = code.dataset.template.split("<key>").join(key); });
    }
    document.querySelectorAll("button[data-copy-snippet]").forEach(btn => {
      btn.addEventListener("click", () => {
        const code = document.querySelector('code[data-snippet="' + btn.dataset.copySnippet + '"]');
        if (code) copy(code.textContent);
      });
    });
    document.getElementById("download-csv").addEventListener("click", () => {
      // a cell that starts like a formula (= + - @, tab, CR) is prefixed with ' so no
      // spreadsheet runs it: names and owners are whatever the minter typed
      const esc = v => {
        let s = String(v == null ? "" : v);
        if (/^[=+\-@\t\r]/.test(s)) s = "'" + s;
        return '"' + s.replace(/"/g, '""') + '"';
      };
      const lines = ["id,name,owner,teams,plan,key"].concat(minted.map(k => [k.id, k.name, k.owner, (k.teams || []).join(" "), k.plan, k.key].map(esc).join(",")));
      const blob = new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv" });
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = "ethereal-keys-" + new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-") + ".csv";
      document.body.appendChild(a); a.click(); a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 1000);
    });
  }

  function copy(text) {
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(() => say("Copied."), () => say("Copy failed: select the text instead.", true));
    } else {
      const ta = document.createElement("textarea"); ta.value = text; document.body.appendChild(ta);
      ta.select(); try { document.execCommand("copy"); say("Copied."); } catch (e) { say("Copy failed.", true); }
      ta.remove();
    }
  }

  // Overview: numbers every 2 s, charts from the ring (live) and the usage store (hour, day).
  const dataEl = document.getElementById("overview-data");
  if (dataEl) {
    const initial = JSON.parse(dataEl.textContent);
    const charts = {};
    const fmtMs = v => v == null ? "—" : (v >= 1000 ? (v / 1000).toFixed(2) + " s" : Math.round(v) + " ms");
    function setLive(live) {
      const values = {
        requests: live.requests, in_flight: live.in_flight,
        error_rate: (live.error_rate * 100).toFixed(1) + "%",
        "status.2xx": live.status["2xx"], "status.4xx": live.status["4xx"], "status.5xx": live.status["5xx"],
        "latency_ms.p50": fmtMs(live.latency_ms.p50), "latency_ms.p99": fmtMs(live.latency_ms.p99),
        "ttfb_ms.p50": fmtMs(live.ttfb_ms.p50), "ttfb_ms.p99": fmtMs(live.ttfb_ms.p99),
        tokens_total: live.tokens_total, "tokens.input": live.tokens.input, "tokens.output": live.tokens.output,
        "tokens.cache_read": live.tokens.cache_read, "tokens.cache_write": live.tokens.cache_write,
        cost_usd: "$" + live.cost_usd,
      };
      for (const [k, v] of Object.entries(values)) {
        document.querySelectorAll('[data-live="' + k + '"]').forEach(el => { el.textContent = v; });
      }
      document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
      const s = live.series;
      const xs = s.requests.map((_, i) => s.start + i * s.step);
      draw("chart-live", [xs, s.requests, s.errors], ["requests", "errors"]);
    }
    function series(rows, since, step, until) {
      const by = new Map(rows.map(r => [r.bucket, r]));
      const xs = [], req = [], err = [], cost = [];
      for (let t = Math.floor(since / step) * step; t < until; t += step) {
        const r = by.get(t) || {};
        xs.push(t); req.push(r.requests || 0); err.push(r.errors || 0); cost.push((r.cost_micro || 0) / 1e6);
      }
      return { xs, req, err, cost };
    }
    function setSeries(d) {
      if (d.hour) {
        const h = series(d.hour.rows, d.hour.since, d.hour.step, d.hour.until);
        draw("chart-hour", [h.xs, h.req, h.err], ["requests", "errors"]);
      }
      if (d.day) {
        const day = series(d.day.rows, d.day.since, d.day.step, d.day.until);
        draw("chart-day", [day.xs, day.req, day.cost], ["requests", "spend $"]);
      }
    }
    async function loadSeries(span) {
      try { setSeries(await api("GET", base + "/api/series" + (span ? "?span=" + span : ""))); } catch (e) { /* next round */ }
    }
    function draw(id, data, names) {
      const el = document.getElementById(id);
      if (!el || typeof uPlot === "undefined") return;
      const width = Math.max(200, el.clientWidth || 320);
      if (charts[id] && charts[id].width !== width) { charts[id].destroy(); delete charts[id]; }
      if (charts[id]) { charts[id].setData(data); return; }
      const colors = ["#0b5cad", "#a4161a", "#17692f"];
      const opts = {
        width, height: 200,
        series: [{}].concat(names.map((n, i) => ({ label: n, stroke: colors[i], width: 2, scale: i === 1 && n.startsWith("spend") ? "usd" : "n" }))),
        axes: [{}, { scale: "n" }].concat(names.some(n => n.startsWith("spend")) ? [{ scale: "usd", side: 1, grid: { show: false } }] : []),
      };
      charts[id] = new uPlot(opts, data, el);
    }
    function start() {
      setLive(initial.live); setSeries(initial.series);
      loadSeries("hour");  // the per-minute hour reads raw rows: after the first paint
      setInterval(async () => {
        try { setLive(await api("GET", base + "/api/live")); } catch (e) { say("Live update failed: " + e.message, true); }
      }, 2000);
      setInterval(() => loadSeries(""), 60000);
    }
    if (typeof uPlot === "undefined") window.addEventListener("load", start); else start();
  }
})();
