// ropenlp demo page: calls POST ner, POST similarity and GET info on this origin and draws the answers.
// No framework, no build step. Offsets from the API count Unicode code points; JS strings count
// UTF-16 units, so every text is split with Array.from() before slicing.
"use strict";

(function () {
  const KEY_STORAGE = "ropenlp.apiKey";  // sessionStorage only, and only when the user asks
  const BAR_STEP = 6;  // px between stacked underlines, mirrors --bar-step in style.css
  const MAX_ROWS = 12;  // nesting levels drawn as underlines; deeper ones keep their chip only
  // Distinct hues, dark enough for white text or light enough for black text (chosen per colour).
  const PALETTE = ["#1f6fb4", "#d9480f", "#2b8a3e", "#862e9c", "#e8a317", "#0c8599", "#c2255c",
                   "#5c7cfa", "#8d6e63", "#66a80f", "#495057", "#f06595"];

  const $ = (id) => document.getElementById(id);
  const labelColours = new Map();
  let infoLoaded = false;

  // ---------------------------------------------------------------- small DOM helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function fmtScore(score) {
    return typeof score === "number" && Number.isFinite(score) ? score.toFixed(2) : "–";
  }

  // ---------------------------------------------------------------- colours and legend

  function textColourFor(hex) {
    const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16) / 255)
      .map((c) => (c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4));
    const luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    return luminance > 0.3 ? "#111" : "#fff";
  }

  function colourOf(label) {
    if (!labelColours.has(label)) labelColours.set(label, PALETTE[labelColours.size % PALETTE.length]);
    return labelColours.get(label);
  }

  function paintChip(node, label) {
    const colour = colourOf(label);
    node.style.setProperty("background-color", colour);
    node.style.setProperty("color", textColourFor(colour));
  }

  function renderLegend(counts) {
    const legend = $("legend");
    legend.replaceChildren();
    if (labelColours.size === 0) return;
    legend.append(el("span", { class: "legend-title", text: "Labels:" }));
    const list = el("ul", { class: "legend-list" });
    for (const label of labelColours.keys()) {
      const swatch = el("span", { class: "chip", text: label });
      paintChip(swatch, label);
      const n = counts ? counts.get(label) || 0 : null;
      const item = el("li", { "data-label": label }, swatch,
        n === null ? null : el("span", { class: "muted", text: `×${n}` }));
      list.append(item);
    }
    legend.append(list);
  }

  // ---------------------------------------------------------------- API calls and errors

  class FormError extends Error {}

  class ApiError extends Error {
    constructor(status, statusText, body, retryAfter) {
      super(`HTTP ${status}`);
      this.status = status;
      this.statusText = statusText;
      this.body = body;
      this.retryAfter = retryAfter;
    }
  }

  function apiKey() {
    return $("api-key").value.trim();
  }

  async function callApi(path, body) {
    const headers = { accept: "application/json" };
    if (body !== undefined) headers["content-type"] = "application/json";
    const key = apiKey();
    if (key) headers.authorization = `Bearer ${key}`;
    // Relative paths: the page also works behind a reverse proxy that mounts the app under a prefix.
    const response = await fetch(path, {
      method: body === undefined ? "GET" : "POST",
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    const raw = await response.text();
    let parsed = null;
    try { parsed = raw ? JSON.parse(raw) : null; } catch (_) { parsed = null; }
    if (!response.ok) {
      throw new ApiError(response.status, response.statusText, parsed === null ? raw : parsed,
        response.headers.get("retry-after"));
    }
    return parsed;
  }

  function showError(box, error) {
    box.replaceChildren();
    if (error instanceof FormError) {
      box.append(el("strong", { text: "Check the form" }), el("p", { text: error.message }));
      box.hidden = false;
      return;
    }
    if (!(error instanceof ApiError)) {
      box.append(el("strong", { text: "Could not reach the service" }),
        el("p", { text: String(error && error.message ? error.message : error) }));
      box.hidden = false;
      return;
    }
    const body = error.body;
    const isObject = body !== null && typeof body === "object";
    const kind = isObject && body.error_type ? ` · ${body.error_type}` : "";
    box.append(el("strong", { class: "error-title", text: `Error ${error.status}${kind}` }));
    let message = isObject ? body.error || body.detail || body.message : body;
    if (!message) message = error.statusText || "The service answered with an error.";
    box.append(el("p", { class: "error-message", text: String(message).slice(0, 2000) }));
    const facts = el("dl", { class: "error-facts" });
    const fact = (name, value) => {
      if (value === undefined || value === null || value === "") return;
      facts.append(el("dt", { text: name }),
        el("dd", { text: typeof value === "object" ? JSON.stringify(value) : String(value) }));
    };
    if (isObject) {
      fact("field", body.field);
      fact("limit", body.limit);
      if (!body.error && body.extra) fact("details", body.extra);
    }
    fact("retry after", error.retryAfter ? `${error.retryAfter} s` : null);
    if (error.status === 401 || error.status === 403) {
      fact("hint", "Enter the API key at the top of the page.");
    }
    if (facts.childElementCount) box.append(facts);
    box.hidden = false;
  }

  // One request at a time per form; the form's data-state (busy, done, error) is for styling and tests.
  async function runForm(button, errorBox, statusLine, work) {
    const form = button.form;
    form.dataset.state = "busy";
    errorBox.hidden = true;
    errorBox.replaceChildren();
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    statusLine.textContent = "Working…";
    const started = performance.now();
    try {
      await work(started);
      form.dataset.state = "done";
    } catch (error) {
      statusLine.textContent = "";
      showError(errorBox, error);
      form.dataset.state = "error";
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }

  // ---------------------------------------------------------------- /info

  // The info document's shape belongs to the server; look for a few well-known keys at any depth.
  function findKey(value, names, depth = 4) {
    if (depth < 0 || value === null || typeof value !== "object") return undefined;
    for (const name of names) {
      if (Object.prototype.hasOwnProperty.call(value, name)) return value[name];
    }
    for (const child of Object.values(value)) {
      const found = findKey(child, names, depth - 1);
      if (found !== undefined) return found;
    }
    return undefined;
  }

  // The limits a person typing text can run into (not queue sizes and the like).
  function describeLimits(limits) {
    if (!limits || typeof limits !== "object") return "";
    return Object.entries(limits)
      .filter(([k, v]) => /char|item|text|candidate/i.test(k) && (typeof v === "number" || typeof v === "string"))
      .map(([k, v]) => `${k.replace(/_/g, " ")} ${v}`).join(" · ");
  }

  async function loadInfo() {
    const line = $("model-info");
    let info;
    try {
      info = await callApi("info");
    } catch (error) {
      line.textContent = error instanceof ApiError && (error.status === 401 || error.status === 403)
        ? "Enter the API key to see the model information."
        : "Model information is not available.";
      return;
    }
    infoLoaded = true;
    let labels = findKey(info, ["labels", "entity_labels", "entity_types"]);
    if (Array.isArray(labels)) {
      labels = labels.map((l) => (typeof l === "string" ? l : l && (l.name || l.label))).filter(Boolean);
      for (const label of labels) colourOf(label);
    }
    renderLegend(null);
    const name = findKey(info, ["model_name", "model", "bundle_name", "name"]);
    const parts = [];
    if (typeof name === "string" && name) parts.push(`Model: ${name}`);
    if (Array.isArray(labels) && labels.length) parts.push(`${labels.length} labels`);
    const limits = describeLimits(findKey(info, ["limits"]));
    if (limits) parts.push(`Limits: ${limits}`);
    if (info && info.auth === true) parts.push("this service asks for an API key");
    line.textContent = parts.length ? parts.join(" — ") : "Model loaded.";
  }

  // ---------------------------------------------------------------- entities: layout

  // Entities in code points, clamped; each gets a row ("slot") of underline: shorter spans first,
  // so an inner entity sits nearest the text and the one containing it draws below it.
  function layoutEntities(entities, length) {
    const spans = [];
    entities.forEach((entity, id) => {
      const start = Math.max(0, Math.min(length, Number(entity.start)));
      const end = Math.max(0, Math.min(length, Number(entity.end)));
      if (Number.isInteger(start) && Number.isInteger(end) && end > start) {
        spans.push({ ...entity, id, start, end, label: String(entity.label) });
      }
    });
    // Each row keeps disjoint spans sorted by start: only the last one starting before a span's end
    // can overlap it (binary search, so thousands of entities stay fast).
    const rows = [];
    const place = (row, span) => {
      let lo = 0;
      let hi = row.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (row[mid].start < span.end) lo = mid + 1; else hi = mid;
      }
      if (lo > 0 && row[lo - 1].end > span.start) return false;
      row.splice(lo, 0, span);
      return true;
    };
    const bySize = [...spans].sort((a, b) => (a.end - a.start) - (b.end - b.start) || a.start - b.start);
    for (const span of bySize) {
      let slot = 0;
      while (!place(rows[slot] || (rows[slot] = []), span)) slot += 1;
      span.slot = slot;
    }
    return { spans, rows: rows.length };
  }

  // How many spans lie inside a longer one: sweep by start (longest first), tracking the furthest
  // end among the spans of other extents seen so far.
  function nestedCount(spans) {
    const sorted = [...spans].sort((a, b) => a.start - b.start || b.end - a.end);
    let count = 0;
    let furthest = -1;
    for (let i = 0; i < sorted.length;) {
      let j = i;
      while (j < sorted.length && sorted[j].start === sorted[i].start && sorted[j].end === sorted[i].end) j += 1;
      if (furthest >= sorted[i].end) count += j - i;
      furthest = Math.max(furthest, sorted[i].end);
      i = j;
    }
    return count;
  }

  // The text becomes a run of inline pieces: text segments cut at every entity boundary, and a
  // label chip after each entity's last character. Each piece carries the underlines of the
  // entities that cover it, drawn as background layers so they follow the text when lines wrap.
  // One sweep over the boundaries, keeping the set of entities open there.
  function renderAnnotated(container, text, spans, rowCount) {
    const chars = Array.from(text);
    const startingAt = new Map();
    const endingAt = new Map();
    const at = (map, key) => map.get(key) || map.set(key, []).get(key);
    for (const s of spans) { at(startingAt, s.start).push(s); at(endingAt, s.end).push(s); }
    const points = [...new Set([0, chars.length, ...startingAt.keys(), ...endingAt.keys()])]
      .sort((a, b) => a - b);
    const fragment = document.createDocumentFragment();
    const piecesOf = new Map(spans.map((s) => [s.id, []]));
    const piece = (node, covering) => {
      node.dataset.ents = covering.map((s) => s.id).join(" ");
      for (const s of covering) piecesOf.get(s.id).push(node);
      fragment.append(node);
    };

    const openSpans = new Set();
    for (let i = 0; i < points.length; i += 1) {
      const here = points[i];
      // Chips of the entities ending here, innermost first; a chip is covered by its own underline,
      // by those of the entities that go on past it and by those ending here with a later chip.
      const ending = (endingAt.get(here) || []).sort((a, b) => a.slot - b.slot);
      for (const s of ending) openSpans.delete(s);
      ending.forEach((span, k) => {
        const title = `${span.label}: ${chars.slice(span.start, span.end).join("")}`
          + ` · score ${fmtScore(span.score)} · characters ${span.start}–${span.end}`;
        const chip = el("span", { class: "chip", tabindex: 0, title, "data-ent": span.id,
          "data-label": span.label, "data-score": span.score },
        el("span", { class: "chip-label", text: span.label }), " ",
        el("span", { class: "chip-score", text: fmtScore(span.score) }));
        paintChip(chip, span.label);
        // A word joiner keeps the chip on the line of the entity's last character.
        piece(el("span", { class: "seg chip-holder" }, "\u2060", chip), [...openSpans, ...ending.slice(k)]);
      });
      for (const s of startingAt.get(here) || []) openSpans.add(s);
      if (i + 1 < points.length) {
        const covering = [...openSpans];
        piece(el("span", { class: covering.length ? "seg ent" : "seg",
          text: chars.slice(here, points[i + 1]).join("") }), covering);
      }
    }

    // Paint the underlines: one background layer per covering entity, at the entity's row.
    const layers = new Map();
    for (const span of spans) {
      if (span.slot >= rowCount) continue;
      const nodes = piecesOf.get(span.id);
      const colour = colourOf(span.label);
      const bottom = (rowCount - 1 - span.slot) * BAR_STEP + 1;
      nodes.forEach((node, k) => {
        const left = k === 0 ? 2 : 0;  // small gaps between entities that touch
        const right = k === nodes.length - 1 ? 2 : 0;
        at(layers, node).push(`linear-gradient(${colour}, ${colour}) left ${left}px bottom ${bottom}px`
          + ` / calc(100% - ${left + right}px) 3px no-repeat`);
      });
    }
    for (const [node, list] of layers) node.style.setProperty("background", list.join(", "));

    container.replaceChildren(fragment);
    container.style.setProperty("--rows", String(rowCount));
    return piecesOf;
  }

  // Hovering or focusing a chip lights up its entity's text; one set of listeners for all chips.
  let drawnPieces = new Map();
  function setUpHighlights(container) {
    const toggle = (event, on) => {
      const chip = event.target.closest && event.target.closest(".chip[data-ent]");
      if (!chip) return;
      for (const node of drawnPieces.get(Number(chip.dataset.ent)) || []) node.classList.toggle("hl", on);
    };
    container.addEventListener("mouseover", (event) => toggle(event, true));
    container.addEventListener("mouseout", (event) => toggle(event, false));
    container.addEventListener("focusin", (event) => toggle(event, true));
    container.addEventListener("focusout", (event) => toggle(event, false));
  }

  // The table is built when it is opened: a long text can hold thousands of entities.
  let tableRows = () => [];
  function renderTable(chars, spans) {
    tableRows = () => [...spans].sort((a, b) => a.start - b.start || b.end - a.end).map((s) => {
      const chip = el("span", { class: "chip", text: s.label });
      paintChip(chip, s.label);
      return el("tr", { "data-ent": s.id },
        el("td", {}, chip),
        el("td", { class: "zh", text: chars.slice(s.start, s.end).join("") }),
        el("td", { text: `${s.start}–${s.end}` }),
        el("td", { text: fmtScore(s.score) }),
        el("td", { text: s.source || "model" }));
    });
    const box = $("ner-table-box");
    $("ner-table").tBodies[0].replaceChildren();
    if (box.open) fillTable();
    box.hidden = spans.length === 0;
  }

  function fillTable() {
    const rows = document.createDocumentFragment();
    for (const row of tableRows()) rows.append(row);
    $("ner-table").tBodies[0].replaceChildren(rows);
  }

  function setUpTable() {
    const box = $("ner-table-box");
    box.addEventListener("toggle", () => {
      if (box.open && $("ner-table").tBodies[0].childElementCount === 0) fillTable();
    });
  }

  // ---------------------------------------------------------------- entities: form

  // One lexicon entry a line: "term label [add|block]", tab- or space-separated (a term with spaces
  // needs tabs). Returns the entries, or throws naming the line.
  function parseLexicon(raw) {
    const entries = [];
    raw.split("\n").forEach((line, k) => {
      if (!line.trim()) return;
      const cols = (line.includes("\t") ? line.split("\t") : line.trim().split(/\s+/)).map((c) => c.trim());
      const [term, label, action = "add"] = cols;
      if (cols.length < 2 || cols.length > 3 || !term || !["add", "block"].includes(action)) {
        throw new FormError(`lexicon line ${k + 1}: expected "term label [add|block]"`);
      }
      entries.push({ term, label, action });
    });
    return entries;
  }

  async function submitNer(event) {
    event.preventDefault();
    const text = $("ner-text").value;
    const result = $("ner-result");
    const status = $("ner-status");
    const request = { texts: [text] };
    const thresholdRaw = $("ner-threshold").value.trim();
    if (thresholdRaw !== "") request.threshold = Number(thresholdRaw);
    await runForm($("ner-submit"), $("ner-error"), status, async (started) => {
      const lexicon = parseLexicon($("ner-lexicon").value);
      if (lexicon.length) request.lexicon = lexicon;
      const answer = await callApi("ner", request);
      const ms = Math.round(performance.now() - started);
      const entities = (answer && answer.results && answer.results[0] && answer.results[0].entities) || [];
      const chars = Array.from(text);
      const { spans, rows } = layoutEntities(entities, chars.length);
      for (const s of spans) colourOf(s.label);
      const counts = new Map();
      for (const s of spans) counts.set(s.label, (counts.get(s.label) || 0) + 1);
      renderLegend(counts);
      const drawnRows = Math.min(Math.max(rows, 1), MAX_ROWS);
      drawnPieces = renderAnnotated(result, text, spans, drawnRows);
      result.hidden = false;
      renderTable(chars, spans);
      const mismatched = spans.filter((s) => typeof s.text === "string"
        && s.text !== chars.slice(s.start, s.end).join("")).length;
      if (spans.length === 0) {
        status.textContent = `No entities found in ${chars.length} characters`
          + (thresholdRaw === "" ? "." : ` above threshold ${thresholdRaw}.`);
        status.classList.add("empty");
      } else {
        status.classList.remove("empty");
        const nested = nestedCount(spans);
        status.textContent = `${spans.length} ${spans.length === 1 ? "entity" : "entities"}`
          + (nested ? ` (${nested} nested inside another)` : "")
          + ` in ${chars.length} characters · ${ms} ms`
          + (rows > drawnRows ? ` · underlines drawn for ${drawnRows} of ${rows} levels of overlap` : "")
          + (mismatched ? ` · warning: ${mismatched} entity texts differ from their offsets` : "");
      }
    });
  }

  // ---------------------------------------------------------------- similarity

  async function submitSimilarity(event) {
    event.preventDefault();
    const query = $("sim-query").value;
    const candidates = $("sim-candidates").value.split(/\r?\n/).filter((line) => line.trim() !== "");
    const request = { query, candidates };
    const topK = $("sim-topk").value.trim();
    if (topK !== "") request.top_k = Number(topK);
    const list = $("sim-result");
    const status = $("sim-status");
    await runForm($("sim-submit"), $("sim-error"), status, async (started) => {
      const answer = await callApi("similarity", request);
      const ms = Math.round(performance.now() - started);
      const results = [...((answer && answer.results) || [])]
        .sort((a, b) => (b.score ?? -Infinity) - (a.score ?? -Infinity));
      list.replaceChildren();
      for (const r of results) {
        const score = typeof r.score === "number" ? r.score : 0;
        const width = `${Math.round(Math.max(0, Math.min(1, score)) * 1000) / 10}%`;
        const bar = el("span", { class: "bar", "aria-hidden": "true" }, el("span", { class: "bar-fill" }));
        bar.firstChild.style.setProperty("width", width);
        const text = typeof r.text === "string" ? r.text : candidates[r.index];
        list.append(el("li", { "data-index": r.index, "data-score": r.score },
          el("span", { class: "rank", "aria-hidden": "true", text: String(list.childElementCount + 1) }),
          el("span", { class: "cand zh", text: text ?? "" }),
          bar,
          el("span", { class: "score", text: fmtScore(r.score) }),
          el("span", { class: "muted idx", title: "position in the candidate list",
            text: `#${Number(r.index) + 1}` })));
      }
      list.hidden = results.length === 0;
      status.textContent = results.length
        ? `${results.length} of ${candidates.length} candidates ranked by cosine similarity · ${ms} ms`
        : "No candidates to rank.";
    });
  }

  // ---------------------------------------------------------------- wiring

  function setUpKey() {
    const input = $("api-key");
    const remember = $("remember-key");
    let stored = null;
    try { stored = sessionStorage.getItem(KEY_STORAGE); } catch (_) { stored = null; }
    if (stored) { input.value = stored; remember.checked = true; }
    const persist = () => {
      try {
        if (remember.checked && apiKey()) sessionStorage.setItem(KEY_STORAGE, apiKey());
        else sessionStorage.removeItem(KEY_STORAGE);
      } catch (_) { /* storage may be disabled: the key then lives in the field only */ }
    };
    input.addEventListener("input", persist);
    remember.addEventListener("change", persist);
    input.addEventListener("change", () => { if (!infoLoaded) loadInfo(); });
    $("key-form").addEventListener("submit", (event) => {  // Enter in the key field
      event.preventDefault();
      if (!infoLoaded) loadInfo();
    });
  }

  function submitOnCtrlEnter(textarea, form) {
    textarea.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    setUpKey();
    setUpHighlights($("ner-result"));
    setUpTable();
    $("ner-form").addEventListener("submit", submitNer);
    $("sim-form").addEventListener("submit", submitSimilarity);
    submitOnCtrlEnter($("ner-text"), $("ner-form"));
    submitOnCtrlEnter($("sim-candidates"), $("sim-form"));
    loadInfo();
  });
})();
