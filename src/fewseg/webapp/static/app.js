// fewseg serve: the page's logic (plain JS, no build step). Support cards (photo, mask uploaded or drawn with
// a brush and an eraser, undo, "none of the class"), images to segment, Adapt, results re-cut at the threshold
// slider's value in the page (from the probability previews) and on the server (numbers, zip), downloads.
"use strict";
const pairing = window.fewsegPairing;
const supports = [];   // one per support card (see addSupport)
let queryFiles = [], info = null, current = null, lastCard = null, recutSeq = 0, recutTimer = null;
const HISTORY = 50;    // undo steps kept per card

function $(id) { return document.getElementById(id); }
function showError(message) { const e = $("error"); e.textContent = message; e.style.display = message ? "block" : "none"; }
function pct(x) { return (100 * x).toFixed(1) + "%"; }
function threshold() { return Number($("threshold").value); }
function pairingOptions() {
  return info ? { imageExtensions: info.pairing.image_extensions, maskSuffix: info.pairing.mask_suffix } : undefined;
}
function el(tag, props, ...children) {
  const e = document.createElement(tag); Object.assign(e, props || {}); e.append(...children); return e;
}
function loadImage(src) {
  return new Promise((resolve, reject) => { const i = new Image(); i.onload = () => resolve(i); i.onerror = reject; i.src = src; });
}
async function jsonOf(response) {
  try { return await response.json(); } catch (e) { return { error: `the server answered ${response.status} ${response.statusText}` }; }
}

fetch("/api/info").then(r => r.json()).then(i => {
  info = i;
  const tiling = i.tiling ? `, large images in tiles of ${i.tiling.tile} px (overlap ${i.tiling.overlap_pixels} px)` : "";
  $("info").textContent = `model: ${i.algorithm}, ${i.image_size}x${i.image_size} input (${i.resize}), ` +
    `${i.adaptation}${tiling}; uploads up to ${i.max_file_mb} MB each`;
  $("threshold").value = i.threshold; showThreshold();
}).catch(() => { $("info").textContent = "model information unavailable"; });

// --- support cards ----------------------------------------------------------------------------------------
function edited(s) { return s.strokes.length > 0; }
function hasMask(s) { return s.negative || !!s.maskFile || !!s.base || s.strokes.some(t => t.mode === "brush"); }

function updateState(s) {
  let text = "no mask yet: upload one, draw on the image, or tick 'none of the class'";
  if (s.negative) text = "none of the class: a negative example (empty mask)";
  else if (s.maskFile && !edited(s)) {
    const m = s.maskInfo;
    text = `mask: uploaded file ${s.maskFile.name}, ${pct(m.foreground_fraction)} of the image` +
      (m.void_fraction ? `, ${pct(m.void_fraction)} void (grey)` : "") +
      (m.foreground_fraction ? "" : " (empty: counts as none of the class)");
  } else if (s.base) text = "mask: uploaded file, edited" + (s.maskInfo.void_fraction ? " (its void pixels are dropped)" : "");
  else if (s.strokes.some(t => t.mode === "brush")) text = "mask: drawn";
  s.state.textContent = text;
  s.state.className = "state" + (hasMask(s) ? " ok" : "");
  s.undo.disabled = !s.history.length;
  s.paint.style.display = s.negative ? "none" : "";
  s.negativeBox.checked = s.negative;
  for (const b of [s.brushButton, s.eraserButton]) b.setAttribute("aria-pressed", String(b.dataset.tool === s.tool));
}

function remember(s) {  // a snapshot for undo, before each change
  s.history.push({ maskFile: s.maskFile, maskInfo: s.maskInfo, base: s.base, baseGreen: s.baseGreen,
                   strokes: s.strokes.slice(), negative: s.negative });
  if (s.history.length > HISTORY) s.history.shift();
}

function undo(s) {
  const last = s.history.pop();
  if (!last) return;
  Object.assign(s, last); s.maskInput.value = ""; redraw(s); updateState(s);
}

function sized(s, width, height) {
  if (s.paint.width === width && s.paint.height === height) return;
  for (const c of [s.paint, s.binary]) { c.width = width; c.height = height; }
  redraw(s);
}

function segment(ctx, a, b, radius) {
  ctx.lineWidth = 2 * radius; ctx.lineCap = "round";
  if (b) { ctx.beginPath(); ctx.moveTo(a[0], a[1]); ctx.lineTo(b[0], b[1]); ctx.stroke(); }
  ctx.beginPath(); ctx.arc((b || a)[0], (b || a)[1], radius, 0, 2 * Math.PI); ctx.fill();
}

function paintStroke(s, stroke, from) {  // points from index `from` on (0: the whole stroke)
  const erase = stroke.mode === "eraser";
  const layers = [[s.paint.getContext("2d"), "#00ff66", erase ? "destination-out" : "source-over"],
                  [s.binary.getContext("2d"), erase ? "#000" : "#fff", "source-over"]];
  for (const [ctx, colour, op] of layers) {
    ctx.save(); ctx.globalCompositeOperation = op; ctx.strokeStyle = colour; ctx.fillStyle = colour;
    for (let i = Math.max(0, from); i < stroke.points.length; i++)
      segment(ctx, stroke.points[i], i > 0 ? stroke.points[i - 1] : null, stroke.radius);
    ctx.restore();
  }
}

function redraw(s) {  // the mask from scratch: the uploaded mask (if any), then every stroke in order
  const p = s.paint.getContext("2d"), b = s.binary.getContext("2d");
  p.clearRect(0, 0, s.paint.width, s.paint.height);
  b.fillStyle = "#000"; b.fillRect(0, 0, s.binary.width, s.binary.height);
  if (s.base) { p.drawImage(s.baseGreen, 0, 0); b.drawImage(s.base, 0, 0); }
  for (const stroke of s.strokes) paintStroke(s, stroke, 0);
}

async function useMaskFile(s, file) {  // the server reads the mask as adaptation will; shown over the photo
  s.state.textContent = "reading the mask…"; s.state.className = "state";
  const form = new FormData(); form.append("image", s.file, s.file.name); form.append("mask", file, file.name);
  let body;
  try { const r = await fetch("/api/mask", { method: "POST", body: form }); body = await jsonOf(r); if (!r.ok && !body.error) body.error = "failed"; }
  catch (e) { body = { error: "could not reach the fewseg server: " + e.message }; }
  if (body.error) { s.maskInput.value = ""; updateState(s); s.state.textContent = body.error; return; }
  const shown = await loadImage(body.mask);
  const w = body.width, h = body.height;
  const read = el("canvas", { width: w, height: h }).getContext("2d");
  read.drawImage(shown, 0, 0);
  const values = read.getImageData(0, 0, w, h).data;
  const base = el("canvas", { width: w, height: h }), green = el("canvas", { width: w, height: h });
  const bd = base.getContext("2d").createImageData(w, h), gd = green.getContext("2d").createImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    const v = values[4 * i];
    if (v > 191) { bd.data.set([255, 255, 255, 255], 4 * i); gd.data.set([0, 255, 102, 255], 4 * i); }
    else if (v > 63) gd.data.set([128, 128, 128, 255], 4 * i);  // void: shown grey, never foreground
  }
  base.getContext("2d").putImageData(bd, 0, 0); green.getContext("2d").putImageData(gd, 0, 0);
  remember(s);
  Object.assign(s, { maskFile: file, maskInfo: body, base, baseGreen: green, strokes: [], negative: false });
  sized(s, w, h); redraw(s); updateState(s);
}

function addSupport(file, maskFile) {
  const img = el("img", { alt: file.name });
  const paint = el("canvas", { className: "paint" }), binary = el("canvas");
  const maskInput = el("input", { type: "file", className: "mask-file", accept: "image/png,image/jpeg,image/bmp,image/tiff,image/webp" });
  const size = el("input", { type: "range", min: 1, max: 40, value: 12, className: "brush-size", title: "brush and eraser size" });
  const brushButton = el("button", { type: "button", className: "tool-brush", textContent: "brush", title: "draw the object" });
  const eraserButton = el("button", { type: "button", className: "tool-eraser", textContent: "eraser", title: "erase part of the mask" });
  brushButton.dataset.tool = "brush"; eraserButton.dataset.tool = "eraser";
  const undoButton = el("button", { type: "button", className: "undo", textContent: "undo", title: "undo the last change (Ctrl+Z)" });
  const clear = el("button", { type: "button", className: "clear", textContent: "clear" });
  const remove = el("button", { type: "button", className: "remove", textContent: "remove" });
  const negativeBox = el("input", { type: "checkbox", className: "negative" });
  const state = el("span", { className: "state" });
  const card = el("div", { className: "card support-card" },
    el("div", { className: "name", textContent: file.name }),
    el("div", { className: "stage" }, img, paint),
    el("div", { className: "tools" }, el("label", { textContent: "mask file: " }, maskInput)),
    el("div", { className: "tools" }, brushButton, eraserButton, size, undoButton, clear, remove),
    el("div", { className: "tools" }, el("label", { title: "this image shows no object of the class: it is used as a " +
      "negative example (an empty mask), teaching what the class is not" }, negativeBox, " none of the class")),
    state);
  $("support").append(card);
  const s = { file, maskFile: null, maskInfo: null, base: null, baseGreen: null, strokes: [], history: [],
              negative: false, tool: "brush", paint, binary, state, card, maskInput, undo: undoButton,
              negativeBox, brushButton, eraserButton };
  card.fewseg = s;  // the card's state, for tests and the console
  supports.push(s); updateState(s);

  img.onload = () => sized(s, img.naturalWidth, img.naturalHeight);
  img.onerror = () => { state.textContent = "this browser cannot show the file; upload a mask file for it"; };
  img.src = URL.createObjectURL(file);

  let stroke = null;
  function at(ev) {
    const r = paint.getBoundingClientRect();
    return [(ev.clientX - r.left) * paint.width / r.width, (ev.clientY - r.top) * paint.height / r.height];
  }
  paint.addEventListener("pointerdown", ev => {
    lastCard = s; remember(s);
    stroke = { mode: s.tool, radius: Math.max(1, size.value / 100 * Math.max(paint.width, paint.height) / 4), points: [at(ev)] };
    s.strokes.push(stroke); paint.setPointerCapture(ev.pointerId); paintStroke(s, stroke, 0); updateState(s);
  });
  paint.addEventListener("pointermove", ev => {
    if (!stroke) return;
    stroke.points.push(at(ev)); paintStroke(s, stroke, stroke.points.length - 1);
  });
  const end = () => { stroke = null; };
  paint.addEventListener("pointerup", end); paint.addEventListener("pointerleave", end);
  for (const b of [brushButton, eraserButton]) b.onclick = () => { s.tool = b.dataset.tool; updateState(s); };
  undoButton.onclick = () => undo(s);
  clear.onclick = () => {
    lastCard = s; remember(s);
    Object.assign(s, { maskFile: null, maskInfo: null, base: null, baseGreen: null, strokes: [], negative: false });
    maskInput.value = ""; redraw(s); updateState(s);
  };
  remove.onclick = () => { supports.splice(supports.indexOf(s), 1); card.remove(); };
  negativeBox.onchange = () => { lastCard = s; remember(s); s.negative = negativeBox.checked; updateState(s); };
  maskInput.onchange = () => { lastCard = s; if (maskInput.files[0]) useMaskFile(s, maskInput.files[0]); };
  if (maskFile) useMaskFile(s, maskFile);
  return s;
}

function addSupportFiles(files) {  // several files at once: masks paired with images by name (the CLI's rule)
  const { pairs, unused } = pairing.pairFiles(files, pairingOptions());
  const suffix = info ? info.pairing.mask_suffix : pairing.DEFAULTS.maskSuffix;
  function earlierCard(file) {  // a mask dropped after its image (same rule): the card waiting for it
    if (!/\.png$/i.test(file.name)) return null;
    const [stem] = pairing.split(file.name), masked = stem.endsWith(suffix);
    const base = masked ? stem.slice(0, stem.length - suffix.length) : stem;
    return supports.find(s => !s.maskFile && !s.base && pairing.split(s.file.name)[0] === base &&
                         (masked || !/\.png$/i.test(s.file.name))) || null;
  }
  for (const [image, mask] of pairs) {
    const card = mask ? null : earlierCard(image);
    if (card) useMaskFile(card, image); else addSupport(image, mask);
  }
  const left = [];
  for (const u of unused) {
    const file = files.find(f => f.name === u.name), card = earlierCard(file);
    if (card) useMaskFile(card, file); else left.push(u);
  }
  $("support-note").textContent = left.length ? "Not used: " + left.map(u => `${u.name} (${u.why})`).join("; ") : "";
}

$("support-files").onchange = ev => { addSupportFiles(Array.from(ev.target.files)); ev.target.value = ""; };
for (const [zone, take] of [[$("support-drop"), files => addSupportFiles(files)], [$("query-drop"), files => setQueries(files)]]) {
  zone.addEventListener("dragover", ev => { ev.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", ev => { ev.preventDefault(); zone.classList.remove("over"); take(Array.from(ev.dataTransfer.files)); });
}
function setQueries(files) {
  queryFiles = files;
  $("queries").textContent = files.length ? `${files.length} image(s): ` + files.map(f => f.name).join(", ") : "";
}
$("query-files").onchange = ev => setQueries(Array.from(ev.target.files));
document.addEventListener("keydown", ev => {
  if ((ev.ctrlKey || ev.metaKey) && ev.key === "z" && lastCard && supports.includes(lastCard) &&
      !(ev.target instanceof HTMLInputElement && ev.target.type === "text")) { ev.preventDefault(); undo(lastCard); }
});

// --- results ----------------------------------------------------------------------------------------------
function showThreshold() { $("threshold-value").textContent = threshold().toFixed(2); }

function describe(r, t) {  // what the numbers under a result mean
  const shown = `${r.name} (${r.width}x${r.height}): `;
  if (r.mask_mean_probability === null)
    return shown + `no pixel above the threshold ${t.toFixed(2)} (highest foreground probability ${r.max_probability.toFixed(2)})`;
  return shown + `foreground ${pct(r.foreground_fraction)} of the image; mean probability inside the mask ` +
    r.mask_mean_probability.toFixed(2);
}
const NUMBERS_HELP = "Foreground: the share of this image's pixels whose foreground probability is above the " +
  "threshold, i.e. the mask. Mean probability inside the mask: the average foreground probability of those " +
  "pixels (how sure the model is where it marks the object, not whether the object is there; it is not an " +
  "accuracy). With an empty mask: the highest probability anywhere in the image.";

function drawOverlay(entry, t) {  // the photo, the mask tinted red and outlined in green, cut at t in the page
  const { w, h, photo, prob } = entry, cut = t * 255, mask = new Uint8Array(w * h);
  for (let i = 0; i < w * h; i++) mask[i] = prob[i] > cut ? 1 : 0;
  const ctx = entry.canvas.getContext("2d"), out = ctx.createImageData(w, h), o = out.data;
  for (let i = 0; i < w * h; i++) {
    const x = i % w, k = 4 * i;
    if (!mask[i]) { o[k] = photo[k]; o[k + 1] = photo[k + 1]; o[k + 2] = photo[k + 2]; }
    else if (x === 0 || x === w - 1 || i < w || i >= w * (h - 1) || !mask[i - 1] || !mask[i + 1] || !mask[i - w] || !mask[i + w]) {
      o[k] = 0; o[k + 1] = 255; o[k + 2] = 0;
    } else { o[k] = 0.5 * photo[k] + 127.5; o[k + 1] = 0.5 * photo[k + 1] + 15; o[k + 2] = 0.5 * photo[k + 2] + 15; }
    o[k + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
  entry.canvas.dataset.foreground = String(mask.reduce((a, b) => a + b, 0));
}

function setLinks(body) {
  const dl = $("download"), model = $("download-model");
  dl.href = body.zip; model.href = body.model;
  dl.style.display = model.style.display = "inline-block"; $("model-hint").style.display = "block";
}

function showNumbers(list, t) {
  current.entries.forEach((e, i) => { e.caption.textContent = describe(list[i], t); e.caption.title = NUMBERS_HELP; });
}

async function showResults(body) {
  const out = $("results"); out.textContent = "";
  current = { id: body.id, entries: [] };
  for (const r of body.results) {
    const [photo, prob] = await Promise.all([loadImage(r.image), loadImage(r.probabilities)]);
    const w = photo.naturalWidth, h = photo.naturalHeight;
    const read = el("canvas", { width: w, height: h }).getContext("2d");
    read.drawImage(photo, 0, 0); const photoData = read.getImageData(0, 0, w, h).data;
    read.clearRect(0, 0, w, h); read.drawImage(prob, 0, 0, w, h);
    const rgba = read.getImageData(0, 0, w, h).data, p = new Uint8Array(w * h);
    for (let i = 0; i < w * h; i++) p[i] = rgba[4 * i];
    const canvas = el("canvas", { className: "overlay", width: w, height: h, title: "overlay of " + r.name });
    const caption = el("figcaption", { className: "numbers" });
    out.append(el("figure", { className: "result" }, canvas, caption));
    current.entries.push({ w, h, photo: photoData, prob: p, canvas, caption });
  }
  for (const e of current.entries) drawOverlay(e, body.threshold);
  showNumbers(body.results, body.threshold);
  setLinks(body); $("threshold").dataset.shown = String(body.threshold);
}

async function recut() {  // the server's numbers and links at the slider's value; no adaptation, no prediction
  if (!current) return;
  const seq = ++recutSeq, t = threshold(), id = current.id;
  try {
    const r = await fetch(`/api/results/${encodeURIComponent(id)}?threshold=${t}`);
    const body = await jsonOf(r);
    if (seq !== recutSeq || !current || current.id !== id) return;  // a later cut, or a new adaptation
    if (body.error) return showError(body.error);
    showNumbers(body.results, t); setLinks(body); $("threshold").dataset.shown = String(t);
  } catch (e) { showError("Could not reach the fewseg server: " + e.message); }
}

$("threshold").addEventListener("input", () => {
  showThreshold();
  if (!current) return;
  for (const e of current.entries) { drawOverlay(e, threshold()); e.caption.textContent = "…"; }
  clearTimeout(recutTimer); recutTimer = setTimeout(recut, 150);
});
$("threshold").addEventListener("change", () => { clearTimeout(recutTimer); recut(); });

function canvasBlob(canvas) { return new Promise(resolve => canvas.toBlob(resolve, "image/png")); }
function blank(canvas) {
  const d = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 0; i < d.length; i += 4) if (d[i] > 127) return false;
  return true;
}

$("adapt").onclick = async () => {
  showError("");
  if (!supports.length) return showError("Add at least one support image (step 1).");
  const missing = supports.filter(s => !hasMask(s)).map(s => s.file.name);
  if (missing.length) return showError("Give these support images a mask (upload or draw) or tick 'none of the class': " + missing.join(", "));
  const erased = supports.filter(s => !s.negative && (edited(s) || !s.maskFile) && blank(s.binary)).map(s => s.file.name);
  if (erased.length) return showError("The mask of " + erased.join(", ") + " is empty: draw the object, or tick 'none of the class'.");
  if (supports.every(s => s.negative || (s.maskFile && !edited(s) && !s.maskInfo.foreground_fraction)))
    return showError("Mark the object in at least one support image: images with none of the class only show what the class is not.");
  if (!queryFiles.length) return showError("Add at least one image to segment (step 2).");
  const form = new FormData();
  for (const s of supports) {
    form.append("support_image", s.file, s.file.name);
    form.append("support_kind", s.negative ? "none" : "mask");
    if (s.negative) continue;
    if (s.maskFile && !edited(s)) form.append("support_mask", s.maskFile, s.maskFile.name);
    else form.append("support_mask", await canvasBlob(s.binary), s.file.name.replace(/\.[^.]*$/, "") + "_drawn.png");
  }
  for (const f of queryFiles) form.append("query", f, f.name);
  form.append("threshold", String(threshold()));
  $("status").textContent = "adapting…"; $("adapt").disabled = true;
  try {
    const response = await fetch("/api/adapt", { method: "POST", body: form });
    const body = await jsonOf(response);
    if (!response.ok || body.error) { $("status").textContent = ""; return showError(body.error || "failed"); }
    const none = body.negatives ? ` (${body.negatives} of them none of the class)` : "";
    $("status").textContent = `adapted on ${body.shots} image(s)${none}, ${body.steps} steps, and segmented ` +
      `${body.results.length} image(s) in ${body.seconds.toFixed(2)} s`;
    await showResults(body);
  } catch (e) {
    $("status").textContent = ""; showError("Could not reach the fewseg server: " + e.message);
  } finally { $("adapt").disabled = false; }
};
