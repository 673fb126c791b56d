// saedb web app: hash-routed pages over the JSON API in saedb/app/api.py.
const view = document.getElementById("view");
const modelSelect = document.getElementById("model");
// steering: feature -> strength; added: features the user added (always shown, removable).
const state = { steering: new Map(), families: new Map(), added: new Set(), lastQuery: "", like: "", showAll: false };

const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const fmt = (x, d = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
const model = () => modelSelect.value;
const featureLink = (id, label) => `<a href="#/feature/${id}">#${id}</a> ${esc(label || "(unlabelled)")}`;

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message; box.hidden = false;
  clearTimeout(showError.timer); showError.timer = setTimeout(() => (box.hidden = true), 5000);
}

async function get(path, params = []) {
  const query = new URLSearchParams(params).toString();
  const response = await fetch(`/api/${path}${query ? "?" + query : ""}`);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `request failed (${response.status})`);
  return body;
}

function bars(points, { x, y, width = 520, height = 160, label = (p) => p[x] }) {
  if (!points.length) return '<p class="muted">no data</p>';
  const max = Math.max(...points.map((p) => p[y])) || 1, w = width / points.length;
  const rects = points.map((p, i) => {
    const h = (p[y] / max) * (height - 24);
    return `<rect class="bar" x="${i * w + 1}" y="${height - 18 - h}" width="${Math.max(w - 2, 1)}" height="${h}"><title>${esc(label(p))}: ${p[y]}</title></rect>`;
  });
  const ticks = [0, Math.floor(points.length / 2), points.length - 1].map((i, n) =>  // first, middle, last: anchored to stay inside
    `<text x="${(i + (n === 2 ? 1 : n === 1 ? 0.5 : 0)) * w}" y="${height - 4}" text-anchor="${["start", "middle", "end"][n]}">${esc(label(points[i]))}</text>`);
  return `<svg viewBox="0 0 ${width} ${height}" width="100%" role="img">${rects.join("")}${ticks.join("")}</svg>`;
}

function lineChart(points, { x, y, width = 520, height = 160 }) {
  if (points.length < 2) return bars(points, { x, y, width, height });
  const xs = points.map((p) => p[x]), ys = points.map((p) => p[y]);
  const [x0, x1, y1] = [Math.min(...xs), Math.max(...xs), Math.max(...ys) || 1];
  const px = (v) => 30 + ((v - x0) / (x1 - x0 || 1)) * (width - 40), py = (v) => height - 20 - (v / y1) * (height - 30);
  const path = points.map((p, i) => `${i ? "L" : "M"}${px(p[x])},${py(p[y])}`).join(" ");
  return `<svg viewBox="0 0 ${width} ${height}" width="100%" role="img"><path class="line" d="${path}"/>
    <text x="30" y="${height - 4}">${x0}</text><text x="${width - 40}" y="${height - 4}">${x1}</text><text x="0" y="12">${fmt(y1, 3)}</text></svg>`;
}

function accuracyChart(run, side, { width = 520, height = 220 } = {}) {
  // Accuracy against cos(q, q'), as the paper's figure: steering, the random-direction control, rewriting.
  const px = (c) => 34 + ((c + 0.2) / 1.2) * (width - 44), py = (a) => height - 22 - a * (height - 34);
  const style = { add: "dot add", clamp: "dot clamp", "family-add": "dot family", "random-direction": "dot control", unmodified: "dot control" };
  const dots = run.results.map((r) => {
    const kind = r.method.startsWith("rewrite") ? "dot rewrite" : style[r.method];
    if (!kind) return "";
    const [cx, cy] = [px(r.cosine), py(r[`${side}_accuracy`])];
    return `<circle class="${kind}" cx="${cx}" cy="${cy}" r="${kind === "dot rewrite" ? 7 : 4}"><title>${esc(r.method)} a_up ${r.a_up ?? "–"} a_down ${r.a_down ?? "–"}: cos ${fmt(r.cosine, 2)}, ${side} ${fmt(r[`${side}_accuracy`], 2)} (n ${r.n_cases})</title></circle>`;
  });
  const axes = [0, 0.5, 1].map((a) => `<text x="2" y="${py(a) + 4}">${a}</text>`).concat(
    [0, 0.5, 1].map((c) => `<text x="${px(c) - 6}" y="${height - 6}">${c}</text>`));
  return `<svg class="accuracy" viewBox="0 0 ${width} ${height}" width="100%" role="img">
    <line class="chance" x1="${px(-0.2)}" x2="${px(1)}" y1="${py(0.2)}" y2="${py(0.2)}"/>${axes.join("")}${dots.join("")}</svg>`;
}

function evaluationCards(runs) {
  if (!runs.length) return '<div class="card"><h2>Steering evaluation</h2><p class="muted">no run yet: <code>saedb eval MODEL</code></p></div>';
  return runs.map((run) => `<div class="card evaluation"><h2>Steering evaluation, judge ${esc(run.judge)} (run ${run.run_id}, ${esc(run.queries)})</h2>
    <p class="muted">accuracy (chance 0.2, dashed) against cos(q, q'): <span class="key add">decoder addition</span>
    <span class="key clamp">clamp</span> <span class="key family">family</span> <span class="key control">random direction / unmodified</span>
    <span class="key rewrite">rewriting (${esc(run.rewriter)})</span></p>
    <div class="row"><div><h3>up</h3>${accuracyChart(run, "up")}</div><div><h3>down</h3>${accuracyChart(run, "down")}</div></div></div>`).join("");
}

function tree(members, current, openDepth = 1) {
  // The family as a collapsible outline with labels: the root and its children open, deeper
  // levels folded (a 300-member family stays readable); each node shows how many it holds below.
  const children = new Map();
  members.forEach((m) => m.parent_id !== null && children.set(m.parent_id, [...(children.get(m.parent_id) || []), m]));
  const size = (id) => (children.get(id) || []).reduce((n, c) => n + 1 + size(c.feature_id), 0);
  const node = (m) => {
    const kids = children.get(m.feature_id) || [];
    const name = `<span class="${m.feature_id === current ? "current" : ""}">${featureLink(m.feature_id, m.label)}</span>`;
    if (!kids.length) return `<li>${name}</li>`;
    return `<li><details${m.depth <= openDepth ? " open" : ""}><summary>${name} <span class="dist">${size(m.feature_id)} below</span></summary>
      <ul>${kids.map(node).join("")}</ul></details></li>`;
  };
  const roots = members.filter((m) => m.parent_id === null || !members.some((o) => o.feature_id === m.parent_id));
  return `<ul class="tree">${roots.map(node).join("")}</ul>`;
}

// --- pages -------------------------------------------------------------------
function restoreSearch(params) {
  // A search's state from its URL (#/search?q=..&model=..&corpus=..&f=ID:S&fam=ID:S, or doc=KEY for documents
  // like one: no text embedder needed): reloadable, shareable.
  if (!params.has("q") && !params.has("doc")) return;
  state.lastQuery = params.get("q") || "";
  state.like = params.get("doc") || "";
  state.corpus = params.get("corpus") || "";
  state.steering = new Map(params.getAll("f").map((p) => p.split(":").map(Number)));
  state.families = new Map(params.getAll("fam").map((p) => p.split(":").map(Number)));
  state.added = new Set(state.steering.keys());
}

function searchParams() {
  const params = [state.like ? ["doc", state.like] : ["q", state.lastQuery], ["model", model()]];
  if (state.corpus) params.push(["corpus", state.corpus]);
  state.steering.forEach((s, f) => s !== 0 && params.push(["f", `${f}:${s}`]));
  state.families.forEach((s, f) => s !== 0 && params.push(["fam", `${f}:${s}`]));
  return params;
}

function addFeature(id, strength) {
  state.steering.set(id, strength);
  state.added.add(id);
}

async function searchPage(params) {
  restoreSearch(params);
  view.innerHTML = `<h1>Steered semantic search</h1>
    <form class="search"><input id="q" name="q" placeholder="e.g. dark matter halos in cosmological simulations" value="${esc(state.lastQuery)}" autocomplete="off">
    <span id="corpus-box"></span><button id="go">Search</button></form>
    <div class="layout"><aside class="card"><h2 style="margin-top:0">Add a feature or family</h2>
      <form id="add" class="search"><input id="add-id" placeholder="a label or concept, a feature id, or fam:ID"><button>Find</button></form>
      <div id="suggestions"></div>
      <h2>Steering <button type="button" id="reset" class="link">reset</button></h2>
      <p class="muted">Each slider turns the query toward a feature: 0.5 is halfway between the query and it, 1 the feature alone, negative away from it.</p>
      <div id="sliders"><p class="muted">Search to see the query's features.</p></div></aside>
    <section class="card"><div id="results"></div></section></div>`;
  const run = debounce(runSearch, 250);
  view.querySelector("form.search").onsubmit = (e) => { e.preventDefault(); state.like = ""; state.lastQuery = document.getElementById("q").value; runSearch(); };
  document.getElementById("add").onsubmit = async (e) => {
    e.preventDefault();
    const raw = document.getElementById("add-id").value.trim();
    if (!raw) return showError("type a label, a concept, a feature id or fam:ID");
    if (/^(fam:)?\d+$/.test(raw)) {
      const fam = raw.startsWith("fam:");
      if (fam) state.families.set(parseInt(raw.slice(4), 10), 0.5); else addFeature(parseInt(raw, 10), 0.5);
      document.getElementById("suggestions").innerHTML = "";
      return run();
    }
    try {
      const found = await get("labels", [["q", raw], ["model", model()], ["limit", "8"]]);
      // The same figures for every offer; its top titles on hover tell features with one label apart.
      const item = (f, extra) => `<li title="${esc(f.top_titles.join("\n"))}"><button type="button" class="add-feature" data-id="${f.feature_id}">+</button>
        ${featureLink(f.feature_id, f.label)} <span class="dist quality">${extra ? extra + ", " : ""}r ${fmt(f.interpretability, 2)}, F1 ${fmt(f.f1, 2)},
        ${f.density === null ? "–" : fmt(100 * f.density, 1)}% of docs</span></li>`;
      document.getElementById("suggestions").innerHTML = `<h3>Concept</h3><ul class="picks concept">${item(found.concept, `by ${found.concept.by}`)}</ul>
        <h3>By label</h3><ul class="picks by-label">${found.by_label.map((f) => item(f)).join("") || '<li class="muted">no label matches</li>'}</ul>
        <h3>By concept (decoder cosine)</h3><ul class="picks by-concept">${found.by_concept.map((f) => item(f, `cos ${fmt(f.cosine, 2)}`)).join("")}</ul>`;
    } catch (err) { showError(err.message); }
  };
  document.getElementById("suggestions").addEventListener("click", (e) => {
    const button = e.target.closest("button.add-feature");
    if (!button) return;
    addFeature(Number(button.dataset.id), 0.8);
    run();
  });
  document.getElementById("sliders").addEventListener("click", (e) => {
    const button = e.target.closest("button.remove");
    if (!button) return;
    const id = Number(button.dataset.id);
    if (button.dataset.kind === "family") state.families.delete(id); else { state.steering.delete(id); state.added.delete(id); }
    run();
  });
  document.getElementById("reset").onclick = () => {  // back to the plain query
    state.steering.clear(); state.families.clear(); state.added.clear();
    if (state.lastQuery) runSearch();
  };
  view.addEventListener("input", (e) => {
    if (!e.target.matches("input[type=range]")) return;
    const { kind, id } = e.target.dataset;
    (kind === "family" ? state.families : state.steering).set(Number(id), Number(e.target.value));
    e.target.closest(".slider").querySelector(".value").textContent = fmt(e.target.value, 2);
    run();
  });
  get("corpora").then((corpora) => {  // a corpus switch when the database holds several
    if (corpora.length > 1) document.getElementById("corpus-box").innerHTML = `<select id="corpus" aria-label="corpus">
      <option value="">all corpora</option>${corpora.map((c) => `<option value="${esc(c.corpus)}"${state.corpus === c.corpus ? " selected" : ""}>${esc(c.corpus)} (${c.papers})</option>`).join("")}</select>`;
    const select = document.getElementById("corpus");
    if (select) select.onchange = () => { state.corpus = select.value; if (state.lastQuery) runSearch(); };
  }).catch((err) => showError(err.message));
  if (state.lastQuery) runSearch();
}

function debounce(fn, ms) { let t; return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); }; }

function slider(kind, id, label, value, activation, removable = false) {
  const fires = activation === undefined ? "" : `<span class="dist">fires ${fmt(activation, 2)}</span>`;
  const remove = removable ? ` <button type="button" class="remove" data-kind="${kind}" data-id="${id}" aria-label="remove ${kind} ${id}">×</button>` : "";
  return `<div class="slider${removable ? " added" : ""}"><div class="name"><span>${kind === "family" ? `family ${id}` : featureLink(id, label)} ${fires}</span>
    <span class="value">${fmt(value, 2)}</span>${remove}</div>
    <input type="range" min="-1" max="1" step="0.05" value="${value}" data-kind="${kind}" data-id="${id}" aria-label="strength of ${kind} ${id}"></div>`;
}

const SLIDER_LIMIT = 8;

function querySliders(data) {
  // What you steer first (features you added, whether the query fires them or not, and families),
  // each with a remove button; then the query's other labelled features by activation
  // (SLIDER_LIMIT of them until "show all"), then its unlabelled ones, collapsed.
  const fired = new Map(data.query_features.map((f) => [f.feature_id, f]));
  const pinned = [...state.steering.keys()].filter((f) => state.added.has(f) || !fired.has(f));
  const label = (f) => (fired.get(f) || data.steering.find((x) => x.feature_id === f) || {}).label;
  let html = pinned.map((f) => slider("feature", f, label(f), state.steering.get(f), fired.get(f)?.activation, true)).join("");
  state.families.forEach((s, f) => (html += slider("family", f, "", s, undefined, true)));
  const rest = data.query_features.filter((f) => !pinned.includes(f.feature_id));
  const labelled = rest.filter((f) => f.label), unlabelled = rest.filter((f) => !f.label);
  const shown = state.showAll ? labelled : labelled.slice(0, SLIDER_LIMIT);
  html += shown.map((f) => slider("feature", f.feature_id, f.label, state.steering.get(f.feature_id) || 0, f.activation)).join("");
  if (shown.length < labelled.length) html += `<button type="button" id="show-all" class="link">show all ${labelled.length} labelled features</button>`;
  if (unlabelled.length) html += `<details class="unlabelled"><summary>${unlabelled.length} unlabelled features</summary>${unlabelled.map((f) =>
    slider("feature", f.feature_id, "", state.steering.get(f.feature_id) || 0, f.activation)).join("")}</details>`;
  return html;
}

async function runSearch() {
  if (!state.like && !state.lastQuery.trim()) return showError("type something to search for");
  const params = searchParams();
  try {
    const data = await get("search", [...params, ["limit", "10"]]);
    history.replaceState(null, "", "#/search?" + new URLSearchParams(params).toString());
    const html = querySliders(data);
    if (!document.activeElement || !document.activeElement.matches("input[type=range]")) document.getElementById("sliders").innerHTML = html || '<p class="muted">No active features.</p>';
    const more = document.getElementById("show-all");
    if (more) more.onclick = () => { state.showAll = true; runSearch(); };
    document.getElementById("results").innerHTML = `<ol class="results">${data.results.map((r) =>
      `<li><a href="https://arxiv.org/abs/${esc(r.arxiv_id)}" target="_blank" rel="noopener">${esc(r.title)}</a>
       <span class="dist">${esc(r.arxiv_id)} · ${r.year ?? ""} · ${esc(r.categories.join(", "))} · distance ${fmt(r.distance)}
       · <a class="like" href="#/search?${new URLSearchParams([["doc", r.arxiv_id], ["model", model()]])}">more like this</a></span>
       ${r.carries.length ? `<div class="carries">carries ${r.carries.map((c) => `<span class="carried" data-id="${c.feature_id}">${featureLink(c.feature_id, c.label)} ${fmt(c.activation, 2)}</span>`).join(", ")}</div>` : ""}
       <details class="abstract"><summary>abstract</summary>${esc(r.abstract)}</details></li>`).join("")}</ol>`;
  } catch (err) { showError(err.message); }
}

async function featurePage(id) {
  const f = await get("feature", [["model", model()], ["id", id], ...(state.corpus ? [["corpus", state.corpus]] : [])]);
  view.innerHTML = `<h1>Feature #${f.feature_id}: ${esc(f.label || "(unlabelled)")}</h1>
    <p><a href="#/search" class="steer-with" data-id="${f.feature_id}">Steer a search along this feature</a></p>
    <div class="row">
      <div class="card"><div class="stat">${fmt(f.interpretability, 2)}</div><div class="muted">interpretability (predictor r), F1 ${fmt(f.f1, 2)}</div></div>
      <div class="card"><div class="stat">${fmt(100 * f.density, 2)}%</div><div class="muted">density: ${f.n_docs} documents${f.corpus ? `; in ${esc(f.corpus.corpus)}: ${f.corpus.n_docs} (${fmt(100 * (f.corpus.density || 0), 2)}%)` : ""}</div></div>
      <div class="card"><div class="stat">${fmt(f.mean_activation)}</div><div class="muted">mean activation (max ${fmt(f.max_activation)})</div></div>
    </div>
    <div class="row">
      <div class="card"><h2>Activation density (histogram)</h2>${bars(f.histogram, { x: "bin_start", y: "count", label: (p) => fmt(p.bin_start, 2) })}</div>
      <div class="card"><h2>Trend by year (share of papers)</h2>${lineChart(f.trend, { x: "year", y: "share_of_year" })}</div>
    </div>
    <div class="row">
      <div class="card"><h2>Top abstracts${f.corpus ? ` in ${esc(f.corpus.corpus)}` : ""}</h2><ol class="results">${f.top_documents.map((d) =>
        `<li><strong>${esc(d.title)}</strong> <span class="dist">${esc(d.arxiv_id)} · ${d.year ?? ""} · ${fmt(d.activation)}</span>
         <div class="abstract">${esc(d.abstract)}…</div></li>`).join("")}</ol></div>
      <div class="card"><h2>Co-occurring features</h2>${f.cooccurring.length ? `<table><tr><th>feature</th><th>documents</th></tr>${f.cooccurring.map((c) =>
        `<tr><td>${featureLink(c.feature_id, c.label)}</td><td>${c.n_docs}</td></tr>`).join("")}</table>` : '<p class="muted">Run <code>saedb families</code> to compute co-occurrence.</p>'}</div>
    </div>
    <div class="row related">${["top", "bottom"].map((side) => `<div class="card"><h2>${side === "top" ? "Most" : "Least"} aligned features (decoder cosine)</h2>
      <table class="related-${side}">${f.related[side].map((r) => `<tr><td>${featureLink(r.feature_id, r.label)}</td><td>${fmt(r.cosine, 2)}</td>
      <td><a href="#/search" class="steer-with" data-id="${r.feature_id}">steer with it</a></td></tr>`).join("")}</table></div>`).join("")}</div>
    <div class="card other-models"><h2>This feature in other models</h2>${f.other_models.length ? `<table><tr><th>model</th><th>best match</th><th>cosine</th><th></th></tr>${f.other_models.map((o) =>
      `<tr><td>${esc(o.other_model)} v${o.other_version} (#${o.other_model_id})</td>
       <td><a href="#/feature/${o.other_feature_id}" class="other-model" data-model="${o.other_model_id}">#${o.other_feature_id}</a> ${esc(o.other_label || "(unlabelled)")}</td>
       <td>${fmt(o.cosine, 2)}</td><td class="muted">${o.mutual ? "mutual" : "one-way"}${o.matched_by >= 2 ? `; split into ${o.matched_by} there` : ""}</td></tr>`).join("")}</table>`
      : '<p class="muted">Run <code>saedb match MODEL_A MODEL_B</code> to trace features across model versions.</p>'}</div>
    ${f.families.map((fam) => `<div class="card"><h2>Family ${fam.family_id}: ${esc(fam.label)} (${fam.size} features)</h2>${tree(fam.members, f.feature_id)}</div>`).join("")}`;
  view.querySelectorAll("a.steer-with").forEach((a) => (a.onclick = () => addFeature(Number(a.dataset.id), 0.8)));
  view.querySelectorAll("a.other-model").forEach((a) => (a.onclick = (event) => {  // the same id in another model: no hashchange
    event.preventDefault();
    modelSelect.value = a.dataset.model;
    if (location.hash === a.getAttribute("href")) render(); else location.hash = a.getAttribute("href");
  }));
}

// Log odds ratios with their 95% intervals, one row per feature, zero marked.
function oddsChart(rows, { width = 640, row = 18 } = {}) {
  if (!rows.length) return '<p class="muted">none</p>';
  const span = Math.max(1, ...rows.map((r) => Math.abs(r.log_odds_low)), ...rows.map((r) => Math.abs(r.log_odds_high)));
  const x = (v) => (width + 200) / 2 + (v / span) * ((width - 200) / 2 - 10);  // 200 px of labels on the left
  const height = rows.length * row + 10;
  return `<svg class="odds" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}">
    <line x1="${x(0)}" x2="${x(0)}" y1="0" y2="${height}" class="axis"/>${rows.map((r, i) => {
      const y = 8 + i * row;
      return `<text x="2" y="${y + 4}">#${r.feature_id} ${esc((r.label || "").slice(0, 24))}</text><line x1="${x(r.log_odds_low)}" x2="${x(r.log_odds_high)}" y1="${y}" y2="${y}" class="ci"/>
        <circle class="dot" cx="${x(r.log_odds)}" cy="${y}" r="4"><title>#${r.feature_id}: log odds ${fmt(r.log_odds, 2)}</title></circle>`;
    }).join("")}</svg>`;
}

async function comparePage() {
  const cats = await get("categories");
  const side = (s) => `<fieldset id="set-${s}"><legend>set ${s.toUpperCase()}${s === "b" ? " (empty: every other document)" : ""}</legend>
    <label>category <input name="category" list="category-list" placeholder="any"></label>
    <label>years <input name="from" type="number" placeholder="from"> – <input name="to" type="number" placeholder="to"></label></fieldset>`;
  view.innerHTML = `<h1>Compare two sets of documents</h1>
    <datalist id="category-list">${cats.map((c) => `<option value="${esc(c.category)}">${c.papers} papers</option>`).join("")}</datalist>
    <form id="compare" class="row">${side("a")}${side("b")}
      <label>documents in both <select name="overlap" id="overlap"><option value="leave-out">leave out</option>
        <option value="a">count in A</option><option value="b">count in B</option></select></label>
      <button id="run-compare" type="submit">Compare</button></form>
    <div id="comparison"></div>`;
  document.getElementById("compare").onsubmit = async (event) => {
    event.preventDefault();
    const params = [["model", model()], ["overlap", document.getElementById("overlap").value]];
    for (const s of ["a", "b"]) {
      const box = document.getElementById(`set-${s}`);
      for (const name of ["category", "from", "to"]) {
        const value = box.querySelector(`[name=${name}]`).value.trim();
        if (value) params.push([`${s}_${name}`, value]);
      }
    }
    try {
      const c = await get("compare", params);
      const table = (rows, cls) => `<table class="${cls}"><tr><th>feature</th><th>share A</th><th>share B</th><th>log odds [95% CI]</th><th>q</th></tr>${rows.map((r) =>
        `<tr><td>${featureLink(r.feature_id, r.label)}</td><td>${fmt(100 * r.a_share, 1)}%</td><td>${fmt(100 * r.b_share, 1)}%</td>
         <td>${fmt(r.log_odds, 2)} [${fmt(r.log_odds_low, 2)}, ${fmt(r.log_odds_high, 2)}]</td><td>${Number(r.q_value).toExponential(1)}</td></tr>`).join("")}</table>`;
      const both = { "leave-out": "left out of both", a: "counted in A", b: "counted in B" }[c.overlap];
      document.getElementById("comparison").innerHTML = `<p class="summary">A: ${esc(c.a)} (${c.a_total} documents) against B: ${esc(c.b)} (${c.b_total});
        ${c.significant} of ${c.tested} features differ at q &lt; 0.05 (Fisher's exact test, Benjamini–Hochberg).
        <span class="in-both">${c.in_both} documents are in both sets: ${both}.</span>
        Each list: the ${c.over.length + c.under.length ? "most significant" : ""} features, sorted by the log odds charted.</p>
        <div class="row">${[["over", "Over-represented in A"], ["under", "Under-represented in A"]].map(([key, title]) =>
          `<div class="card"><h2>${title}</h2>${oddsChart(c[key])}${table(c[key], key)}</div>`).join("")}</div>`;
    } catch (err) { showError(err.message); }
  };
}

async function familiesPage() {
  const families = await get("families", [["model", model()]]);
  view.innerHTML = `<h1>Feature families</h1><div class="card">${families.length ? `<table><tr><th>family</th><th>label</th><th>root</th><th>features</th><th>iteration</th></tr>
    ${families.map((f) => `<tr><td><a href="#/family/${f.family_id}">${f.family_id}</a></td><td>${esc(f.label)}</td><td>${featureLink(f.root_feature, "")}</td><td>${f.size}</td><td>${f.iteration}</td></tr>`).join("")}</table>`
    : '<p class="muted">No families yet: run <code>saedb families</code>.</p>'}</div>`;
}

async function familyPage(id) {
  const f = await get("family", [["model", model()], ["id", id]]);
  view.innerHTML = `<h1>Family ${f.family_id}: ${esc(f.label)}</h1>
    <p class="muted">${f.size} features; name scored by the predictor on the family's documents: F1 ${fmt(f.f1, 2)}, Pearson r ${fmt(f.pearson, 2)}</p>
    <div class="card">${tree(f.members, f.root_feature)}</div>
    <div class="card"><table><tr><th>feature</th><th>parent</th><th>depth</th></tr>${f.members.map((m) =>
      `<tr><td>${featureLink(m.feature_id, m.label)}</td><td>${m.parent_id ?? "root"}</td><td>${m.depth}</td></tr>`).join("")}</table></div>`;
}

async function dashboardPage() {
  const d = await get("dashboard", [["model", model()], ...(state.corpus ? [["corpus", state.corpus]] : [])]);
  view.innerHTML = `<h1>Model ${esc(d.model.name)} v${d.model.version}${d.corpus ? ` · corpus ${esc(d.corpus)}` : ""}</h1>
    <div class="row">
      <div class="card"><div class="stat">${d.active_features} / ${d.model.n_latents}</div><div class="muted">features that fire (k = ${d.model.k})</div></div>
      <div class="card"><div class="stat">${d.labelled_features}</div><div class="muted">labelled, mean interpretability ${fmt(d.mean_interpretability, 2)}</div></div>
      <div class="card"><div class="stat">${d.model.n_documents}</div><div class="muted">documents encoded</div></div>
    </div>
    <div class="row">
      <div class="card"><h2>Feature density (log10)</h2>${bars(d.density_histogram, { x: "log10_density", y: "count", label: (p) => fmt(p.log10_density, 2) })}</div>
      <div class="card"><h2>Interpretability (predictor Pearson r)</h2>${bars(d.interpretability_histogram, { x: "pearson_bin", y: "count", label: (p) => fmt(p.pearson_bin, 1) })}</div>
      <div class="card"><h2>Documents per year</h2>${bars(d.documents_per_year, { x: "year", y: "count" })}</div>
    </div>
    <div class="card"><h2>Most common features</h2><table><tr><th>feature</th><th>density</th><th>mean activation</th><th>interpretability</th></tr>
      ${d.top_features.map((f) => `<tr><td>${featureLink(f.feature_id, f.label)}</td><td>${fmt(100 * f.density, 2)}%</td><td>${fmt(f.mean_activation)}</td><td>${fmt(f.interpretability, 2)}</td></tr>`).join("")}</table></div>
    ${evaluationCards(d.evaluation)}`;
}

async function render() {
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  const [page, id] = path.split("/");
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === (page || "search")));
  try {
    if (page === "feature") await featurePage(id);
    else if (page === "families") await familiesPage();
    else if (page === "family") await familyPage(id);
    else if (page === "dashboard") await dashboardPage();
    else if (page === "compare") await comparePage();
    else await searchPage(new URLSearchParams(query || ""));
  } catch (err) {
    view.innerHTML = `<h1>Something went wrong</h1><p>${esc(err.message)}</p>`;
    showError(err.message);
  }
}

(async function start() {
  try {
    const models = await get("models");
    if (!models.length) { view.innerHTML = "<h1>No published model yet</h1><p>Run <code>saedb train</code> first.</p>"; return; }
    modelSelect.innerHTML = models.map((m) => `<option value="${m.model_id}">${esc(m.name)} v${m.version} (#${m.model_id})</option>`).join("");
    const linked = new URLSearchParams(location.hash.split("?")[1] || "").get("model");  // a shared search's model
    if (models.some((m) => String(m.model_id) === linked)) modelSelect.value = linked;
    modelSelect.onchange = render;
    window.addEventListener("hashchange", render);
    render();
  } catch (err) { showError(err.message); }
})();
