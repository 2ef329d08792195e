// cwm-agent view: search, filters, sorting and keyboard moves over a page rendered in advance.
// State that should survive a reload or be linked to (filters, sort, search, the open
// trajectory) lives in the address: "#outcome=resolved&sort=-tokens", "#view=candidate-2".
(function () {
  "use strict";
  const $$ = (selector, root) => Array.from((root || document).querySelectorAll(selector));
  const search = document.getElementById("search");
  const count = document.getElementById("search-count");
  let current = -1;

  function state() {
    const params = new URLSearchParams(location.search);
    const raw = location.hash.slice(1);
    if (raw.includes("=")) new URLSearchParams(raw).forEach((v, k) => params.set(k, v));
    return params;
  }

  function save(params) {
    const text = params.toString();
    history.replaceState(null, "", text ? "#" + text : location.pathname + location.search);
  }

  function change(key, value) {
    const params = state();
    if (value) params.set(key, value); else params.delete(key);
    save(params);
  }

  // Test-time scaling pages hold several views: the overview and one per trajectory.
  function activeView() {
    const views = $$(".view");
    return views.find((v) => !v.hidden) || document.body;
  }

  function showView() {
    const views = $$(".view");
    if (!views.length) return;
    const raw = location.hash.slice(1);
    let name = state().get("view") || "overview";
    const anchor = !raw.includes("=") && raw ? document.getElementById(raw) : null;
    const owner = anchor && anchor.closest(".view");
    if (owner) name = owner.id;
    views.forEach((v) => { v.hidden = v.id !== name; });
    if (!views.some((v) => !v.hidden)) views[0].hidden = false;
    current = -1;
    if (anchor) anchor.scrollIntoView(); else window.scrollTo(0, 0);
  }

  function applySearch() {
    const query = search.value.trim().toLowerCase();
    const items = $$(".searchable", activeView());
    let hits = 0;
    items.forEach((item) => {
      const hit = !query || item.textContent.toLowerCase().includes(query);
      item.classList.toggle("hidden-by-search", !hit);
      if (hit) hits += 1;
      if (hit && query) {
        $$("details", item).forEach((d) => {
          if (d.textContent.toLowerCase().includes(query)) d.open = true;
        });
      }
    });
    count.textContent = query ? hits + " / " + items.length : "";
  }

  function applyFilters() {
    const params = state();
    const selects = $$("select[data-filter]");
    selects.forEach((s) => { s.value = params.get(s.dataset.filter) || ""; });
    const rows = $$("tr[data-outcome]");
    rows.forEach((row) => {
      const out = selects.some((s) => s.value && row.dataset[s.dataset.filter] !== s.value);
      row.classList.toggle("hidden-by-filter", out);
    });
    const shown = document.getElementById("shown");
    if (shown && rows.length) {
      const visible = rows.filter((r) => !r.classList.contains("hidden-by-filter")).length;
      shown.textContent = visible + " of " + rows.length + " instances";
    }
    const only = params.get("only") === "problems";
    $$("input[data-only]").forEach((box) => { box.checked = only; });
    $$(".turn").forEach((t) => t.classList.toggle("hidden-by-filter", only && t.dataset.problem === "no"));
    applySort(params.get("sort") || "");
    if (params.has("q") && search.value !== params.get("q")) search.value = params.get("q");
    applySearch();
  }

  function applySort(spec) {
    const key = spec.replace(/^-/, "");
    $$("table.sortable").forEach((table) => {
      const head = $$("th[data-sort]", table);
      head.forEach((th) => th.classList.remove("asc", "desc"));
      const th = head.find((h) => h.dataset.sort === key);
      if (!th) return;
      const down = spec.startsWith("-");
      th.classList.add(down ? "desc" : "asc");
      const numeric = th.hasAttribute("data-num");
      const body = table.tBodies[0];
      const rows = Array.from(body.rows);
      rows.sort((a, b) => {
        const x = a.dataset[key] || "", y = b.dataset[key] || "";
        const order = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
        return down ? -order : order;
      });
      rows.forEach((r) => body.appendChild(r));
    });
  }

  function turnsShown() {
    return $$(".turn", activeView()).filter((t) => t.offsetParent !== null);
  }

  function move(step) {
    const turns = turnsShown();
    if (!turns.length) return;
    turns.forEach((t) => t.classList.remove("current"));
    current = Math.max(0, Math.min(turns.length - 1, current + step));
    turns[current].classList.add("current");
    turns[current].scrollIntoView({ block: "start" });
  }

  search.addEventListener("input", () => { change("q", search.value.trim()); applySearch(); });
  $$("select[data-filter]").forEach((s) => s.addEventListener("change", () => {
    change(s.dataset.filter, s.value);
    applyFilters();
  }));
  $$("input[data-only]").forEach((box) => box.addEventListener("change", () => {
    change("only", box.checked ? box.dataset.only : "");
    applyFilters();
  }));
  $$("th[data-sort]").forEach((th) => th.addEventListener("click", () => {
    const now = state().get("sort") || "";
    change("sort", now === th.dataset.sort ? "-" + th.dataset.sort : th.dataset.sort);
    applyFilters();
  }));
  $$("button[data-toggle=reasoning]").forEach((button) => button.addEventListener("click", () => {
    const all = $$(".reasoning", button.closest(".view") || document);
    const open = !all.every((d) => d.open);
    all.forEach((d) => { d.open = open; });
    button.textContent = open ? "collapse reasoning" : "expand reasoning";
  }));
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const typing = event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement;
    if (event.key === "Escape") {
      if (search.value) { search.value = ""; change("q", ""); applySearch(); }
      else if (state().get("view")) { location.hash = ""; }
      search.blur();
      return;
    }
    if (typing) return;
    if (event.key === "/") { event.preventDefault(); search.focus(); }
    else if (event.key === "j" || event.key === "n") move(1);
    else if (event.key === "k" || event.key === "p") move(-1);
    else if (event.key === "r") {
      const turn = turnsShown()[current];
      const details = turn && turn.querySelector(".reasoning");
      if (details) details.open = !details.open;
    }
  });
  window.addEventListener("hashchange", () => { showView(); applyFilters(); });
  showView();
  applyFilters();
  document.body.dataset.ready = "yes";
})();
