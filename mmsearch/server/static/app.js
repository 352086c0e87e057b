// The mmsearch web UI: plain JS, no build step. Talks to the API of the page's own server
// (relative URLs, so it also works behind a path prefix). Data is only ever inserted as text.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, imageName: "", like: null, keyNeeded: false, blobs: [] };

function apiKey() { return sessionStorage.getItem("mmsearch-key") || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (apiKey()) headers["Authorization"] = "Bearer " + apiKey();
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    state.keyNeeded = true;
    $("key-label").hidden = false;
  }
  if (!response.ok) {
    let body = {};
    try { body = await response.json(); } catch (e) { /* not JSON */ }
    const err = new Error(body.detail || response.statusText || "request failed");
    err.code = body.error || String(response.status);
    throw err;
  }
  return response;
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = "";
  status.className = isError ? "error" : "";
  if (state.like && !isError) {
    const chip = document.createElement("span");
    chip.className = "like-chip";
    chip.textContent = "more like " + state.like;
    const x = document.createElement("button");
    x.type = "button"; x.className = "link"; x.textContent = "×"; x.title = "clear";
    x.addEventListener("click", () => { state.like = null; setStatus(""); });
    chip.appendChild(x);
    status.appendChild(chip);
  }
  status.appendChild(document.createTextNode(text));
}

// --- index facts and tasks ------------------------------------------------------------

async function loadInfo() {
  try {
    const info = await (await api("info")).json();
    const ix = info.index;
    $("index-info").textContent =
      `${ix.name} · ${ix.live.toLocaleString()} items · ${ix.faiss} · model ${info.model.id.split("/").pop()}`;
    fillModalities(ix.modalities || {}, info.modalities || {});
    $("mode-label").hidden = !(ix.lexical && ix.lexical.length);  // an index with a lexical index offers the toggle
    state.multiVector = Boolean(ix.multi_vector);  // token vectors: hits show where the query matched
  } catch (e) {
    $("index-info").textContent = state.keyNeeded ? "enter the API key to search" : "index info unavailable";
  }
}

// The "Show" selector: "has an image" / "has text" (any item holding one), then each
// modality exactly, with the index's live counts; the server's /info gives the vocabulary.
const MODALITY_LABELS = { "text": "text only", "image": "images only", "image,text": "image + text",
  "page": "document pages" };

function fillModalities(counts, vocabulary) {
  const select = $("modality");
  const keep = select.value;
  select.length = 1;
  const add = (value, label, n) => {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = `${label} (${n.toLocaleString()})`;
    select.appendChild(option);
  };
  const count = (names) => names.reduce((sum, m) => sum + (counts[m] || 0), 0);
  const has = vocabulary.has || {};
  for (const part of ["image", "text"]) {
    if (has[part] && count(has[part]) > 0) add("has:" + part, `has ${part === "image" ? "an image" : "text"}`, count(has[part]));
  }
  for (const m of vocabulary.vocabulary || Object.keys(counts)) {
    if (counts[m]) add(m, MODALITY_LABELS[m] || m, counts[m]);
  }
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
}

function modalityFilter() {
  const value = $("modality").value;
  if (!value) return null;
  return { modality: value.startsWith("has:") ? { has: value.slice(4) } : value };
}

async function loadTasks() {
  let tasks = [];
  try { tasks = await (await api("tasks")).json(); } catch (e) { return; }
  const select = $("task");
  select.length = 1;
  const groups = {};
  for (const t of tasks) {
    if (!groups[t.source]) {
      groups[t.source] = document.createElement("optgroup");
      groups[t.source].label = t.source;
      select.appendChild(groups[t.source]);
    }
    const option = document.createElement("option");
    option.value = t.name;
    option.textContent = `${t.name} — ${t.description}`.slice(0, 90);
    option.title = t.query_instruction;
    groups[t.source].appendChild(option);
  }
}

// --- the query image: choose, drop, paste ----------------------------------------------

function setImage(file) {
  if (!file || !file.type.startsWith("image/")) {
    setStatus(`not an image: ${file ? file.name : "nothing"}`, true);
    return;
  }
  const reader = new FileReader();
  reader.onload = async () => {
    const { url, note } = await shrink(reader.result);
    state.image = url;
    state.imageName = file.name || "pasted image";
    state.like = null;
    $("preview").src = url;
    $("preview-label").textContent = `${state.imageName} (${Math.round(file.size / 1024)} KB${note})`;
    $("drop-empty").hidden = true;
    $("drop-full").hidden = false;
  };
  reader.readAsDataURL(file);
}

// A photo larger than MAX_SIDE is scaled down before upload: the model sees far fewer pixels anyway.
const MAX_SIDE = 2048;

async function shrink(dataUrl) {
  const img = new Image();
  try {
    img.src = dataUrl;
    await img.decode();
  } catch (e) {
    return { url: dataUrl, note: "" };  // let the server name what is wrong with it
  }
  const scale = MAX_SIDE / Math.max(img.naturalWidth, img.naturalHeight);
  if (scale >= 1) return { url: dataUrl, note: "" };
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(img.naturalWidth * scale);
  canvas.height = Math.round(img.naturalHeight * scale);
  canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
  return { url: canvas.toDataURL("image/jpeg", 0.92), note: `, sent as ${canvas.width}×${canvas.height}` };
}

function clearImage() {
  state.image = null;
  $("file").value = "";
  $("preview").removeAttribute("src");
  $("drop-empty").hidden = false;
  $("drop-full").hidden = true;
}

function wireImageInput() {
  const drop = $("drop");
  $("pick").addEventListener("click", () => $("file").click());
  $("file").addEventListener("change", (e) => setImage(e.target.files[0]));
  $("clear-image").addEventListener("click", clearImage);
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) setImage(e.dataTransfer.files[0]);
  });
  // a file dropped elsewhere on the page must not navigate away from it
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  window.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData || {}).items || []].find((i) => i.type.startsWith("image/"));
    if (item) setImage(item.getAsFile());
  });
}

// --- search and results -----------------------------------------------------------------

async function search() {
  const text = $("q").value.trim();
  if (!text && !state.image && !state.like) {
    setStatus("type a query, add an image, or pick “More like this” on a result", true);
    return;
  }
  const body = { k: Number($("k").value) };
  if (text) body.text = text;
  if (state.image) body.image = state.image;
  if (state.like) body.like = state.like;
  if ($("task").value) body.task = $("task").value;
  if (!$("mode-label").hidden && $("mode").value !== "vector") body.mode = $("mode").value;
  const filter = modalityFilter();
  if (filter) body.filter = filter;
  $("go").disabled = true;
  setStatus("searching…");
  try {
    const response = await api("search", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const result = await response.json();
    state.matchText = state.multiVector && !state.image && !state.like ? text : "";
    render(result.hits);
    setStatus(`${result.hits.length} results in ${Math.round(result.took_ms)} ms`);
  } catch (e) {
    render([]);
    setStatus(`${e.code}: ${e.message}`, true);
  } finally {
    $("go").disabled = false;
  }
}

async function showThumb(img, url, fallback) {
  img.addEventListener("error", () => { img.hidden = true; fallback.hidden = false; });
  if (!apiKey()) { img.src = url; return; }
  try {  // with a key, an <img src> cannot send the header: fetch it and show a blob
    const blob = await (await api(url)).blob();
    const objectUrl = URL.createObjectURL(blob);
    state.blobs.push(objectUrl);
    img.src = objectUrl;
  } catch (e) { img.hidden = true; fallback.hidden = false; }
}

function render(hits) {
  state.blobs.forEach((u) => URL.revokeObjectURL(u));
  state.blobs = [];
  const grid = $("results");
  grid.textContent = "";
  for (const hit of hits) grid.appendChild(card(hit));
}

// Multi-vector indexes: a heat map over the page of where the query's tokens found their best
// match (the MaxSim argmax, from /items/{id}/matches), drawn over the thumbnail.
async function showMatches(thumb, img, id, text) {
  let map;
  try {
    map = await (await api("items/" + encodeURIComponent(id) + "/matches?text=" + encodeURIComponent(text))).json();
  } catch (e) { return; }  // no page image, or not answerable: the plain thumbnail stays
  if (!img.complete) await new Promise((done) => img.addEventListener("load", done, { once: true }));
  if (!img.naturalWidth) return;
  const [rows, cols] = map.grid;
  const peak = Math.max(...map.heat, 1e-9);
  const canvas = document.createElement("canvas");
  canvas.className = "heat";
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  canvas.title = "where the query matched (MaxSim argmax)";
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const w = canvas.width / cols, h = canvas.height / rows;
  map.heat.forEach((value, i) => {
    if (value <= 0) return;
    ctx.fillStyle = `rgba(255, 40, 0, ${(0.65 * value / peak).toFixed(3)})`;
    ctx.fillRect((i % cols) * w, Math.floor(i / cols) * h, w, h);
  });
  img.hidden = true;
  thumb.appendChild(canvas);
}

function card(hit) {
  const node = $("card").content.firstElementChild.cloneNode(true);
  const meta = hit.metadata || {};
  const hasImage = ["image", "image,text", "page"].includes(meta.modality) || Boolean(meta.image);
  const img = node.querySelector(".thumb img");
  const textThumb = node.querySelector(".text-thumb");
  textThumb.textContent = meta.text || hit.id;
  textThumb.hidden = hasImage;
  if (hasImage) showThumb(img, "items/" + encodeURIComponent(hit.id) + "/thumbnail", textThumb); else img.hidden = true;
  if (hasImage && state.matchText) showMatches(node.querySelector(".thumb"), img, hit.id, state.matchText);
  node.querySelector(".rank").textContent = "#" + hit.rank;
  node.querySelector(".score").textContent = hit.score.toFixed(4);
  node.querySelector(".badge").textContent = meta.modality || "";
  node.querySelector(".id").textContent = hit.id;
  node.querySelector(".caption").textContent = hasImage ? meta.text || "" : "";  // text items show it above
  const dl = node.querySelector("dl");
  for (const [key, value] of Object.entries(meta)) {
    if (key === "text" || value === null || value === "") continue;
    const dt = document.createElement("dt"); dt.textContent = key;
    const dd = document.createElement("dd");
    dd.textContent = typeof value === "object" ? JSON.stringify(value) : String(value);
    dl.append(dt, dd);
  }
  node.querySelector(".more").addEventListener("click", () => {
    state.like = hit.id;
    clearImage();
    $("q").value = "";
    window.scrollTo({ top: 0, behavior: "smooth" });
    search();
  });
  return node;
}

function init() {
  $("api-key").value = apiKey();
  $("api-key").addEventListener("change", (e) => {
    sessionStorage.setItem("mmsearch-key", e.target.value.trim());
    loadInfo(); loadTasks();
  });
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); search(); });
  $("modality").addEventListener("change", () => { if ($("q").value.trim() || state.image || state.like) search(); });
  wireImageInput();
  loadInfo();
  loadTasks();
}

document.addEventListener("DOMContentLoaded", init);
