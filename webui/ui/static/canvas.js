// Easel's outpaint canvas: an edgeless, pannable, zoomable picture made of accepted boxes.
//
// The picture is a list of patches (PNG data URLs at integer world positions), drawn in order;
// accepting a candidate or uploading an image adds one, undo/redo move patches between the list and
// a redo stack. The state lives in the browser (IndexedDB, localStorage as a fallback), so it
// survives a reload without the server keeping anything per session. Generating sends the box's
// pixels with their alpha (transparent = empty) and the tab's controls to /easel/v1/canvas; the
// server decides txt2img / img2img / outpaint and returns whole boxes as candidates.
//
// The Gradio tab calls window.easelCanvas.generate(names, values) from the Generate button (the
// controls' values come from Gradio itself), and setBoxSize/interrupt/lastSeed likewise.
(() => {
  "use strict";
  const API = "/easel/v1/canvas";
  const GRID = 8;
  // With logins, each sign-in gets its own storage key (the easel-storage cookie), so the next person on
  // this browser never sees the previous one's canvas; sign-out also asks the browser to clear it all.
  const SIGN_IN = (document.cookie.match(/(?:^|;\s*)easel-storage=([^;]+)/) || [])[1];
  const DB = { name: "easel", store: "canvas", key: "outpaint-state" + (SIGN_IN ? ":" + SIGN_IN : "") };
  const POLL_MS = 300;

  const snap = (v) => Math.round(v / GRID) * GRID;
  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

  // -- persistence ---------------------------------------------------------------------------------
  function openDb() {
    return new Promise((resolve, reject) => {
      const req = indexedDB.open(DB.name, 1);
      req.onupgradeneeded = () => req.result.createObjectStore(DB.store);
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }
  async function loadSaved() {
    try {
      const db = await openDb();
      return await new Promise((resolve, reject) => {
        const req = db.transaction(DB.store).objectStore(DB.store).get(DB.key);
        req.onsuccess = () => resolve(req.result || null);
        req.onerror = () => reject(req.error);
      });
    } catch (e) {
      const text = localStorage.getItem(DB.key);
      return text ? JSON.parse(text) : null;
    }
  }
  async function store(value) {
    try {
      const db = await openDb();
      await new Promise((resolve, reject) => {
        const tx = db.transaction(DB.store, "readwrite");
        tx.objectStore(DB.store).put(value, DB.key);
        tx.oncomplete = resolve;
        tx.onerror = () => reject(tx.error);
      });
    } catch (e) {
      try { localStorage.setItem(DB.key, JSON.stringify(value)); } catch (e2) { /* full: keep in memory */ }
    }
  }

  // -- PNG with infotext ------------------------------------------------------------------------------
  const CRC_TABLE = (() => {
    const t = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      t[n] = c >>> 0;
    }
    return t;
  })();
  function crc32(bytes) {
    let c = 0xffffffff;
    for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }
  // An iTXt "parameters" chunk (UTF-8, so any prompt survives) right after IHDR, as A1111 readers expect.
  function withInfotext(png, text) {
    if (!text) return png;
    const enc = new TextEncoder();
    const data = new Uint8Array([...enc.encode("parameters"), 0, 0, 0, 0, 0, ...enc.encode(text)]);
    const chunk = new Uint8Array(12 + data.length);
    const view = new DataView(chunk.buffer);
    view.setUint32(0, data.length);
    chunk.set(enc.encode("iTXt"), 4);
    chunk.set(data, 8);
    view.setUint32(8 + data.length, crc32(chunk.subarray(4, 8 + data.length)));
    const at = 8 + 25; // signature + IHDR chunk
    const out = new Uint8Array(png.length + chunk.length);
    out.set(png.subarray(0, at), 0);
    out.set(chunk, at);
    out.set(png.subarray(at), at + chunk.length);
    return out;
  }

  // -- images ----------------------------------------------------------------------------------------
  const images = new Map(); // data URL -> HTMLImageElement (decoded once)
  function imageFor(src, onload) {
    let img = images.get(src);
    if (!img) {
      img = new Image();
      img.onload = onload;
      img.src = src;
      images.set(src, img);
    }
    return img.complete && img.naturalWidth ? img : null;
  }
  function loadImage(src) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("not an image"));
      img.src = src;
    });
  }

  // -- the canvas -------------------------------------------------------------------------------------
  class OutpaintCanvas {
    constructor() {
      this.state = { patches: [], redo: [], view: null, box: { x: 0, y: 0, w: 512, h: 512 }, lastSeed: -1 };
      this.staging = null; // {x, y, w, h, items: [{src, info, seed}], index}
      this.job = null;
      this.root = null;
      this.ready = loadSaved().then((saved) => {
        if (saved && Array.isArray(saved.patches)) Object.assign(this.state, saved);
        this.render();
      });
    }

    // mounting: Gradio renders a tab's contents when it is first shown, and may render them again
    mount(root) {
      if (this.root === root) return;
      this.root = root;
      root.innerHTML = `
        <div class="easel-canvas-toolbar">
          <button type="button" id="outpaint_undo" title="Undo the last accepted box">↶ Undo</button>
          <button type="button" id="outpaint_redo" title="Redo">↷ Redo</button>
          <label class="easel-canvas-upload" title="Put an image on the canvas at the box's position">⤒ Upload
            <input type="file" id="outpaint_upload" accept="image/*" hidden></label>
          <button type="button" id="outpaint_export_visible">Export visible</button>
          <button type="button" id="outpaint_export_whole">Export whole</button>
          <button type="button" id="outpaint_reset_view" title="Show the whole picture">Fit</button>
          <button type="button" id="outpaint_new" title="Start an empty canvas">New</button>
          <span class="easel-canvas-status" id="outpaint_status"></span>
        </div>
        <div class="easel-canvas-stage">
          <canvas id="outpaint_canvas_el" tabindex="0"></canvas>
          <div class="easel-canvas-staging" id="outpaint_staging" hidden>
            <button type="button" id="outpaint_prev" title="Previous candidate">◀</button>
            <span id="outpaint_candidate"></span>
            <button type="button" id="outpaint_next" title="Next candidate">▶</button>
            <button type="button" id="outpaint_accept" class="primary">Accept</button>
            <button type="button" id="outpaint_discard">Discard</button>
          </div>
        </div>
        <div id="outpaint_progress"></div>`;
      const w = Number(root.dataset.width) || 512, h = Number(root.dataset.height) || 512;
      if (!this.state.patches.length && !this.state.view) this.state.box = { x: 0, y: 0, w, h };
      this.canvas = root.querySelector("canvas");
      this.ctx = this.canvas.getContext("2d");
      this.bindUi();
      new ResizeObserver(() => this.resize()).observe(this.canvas.parentElement);
      this.resize();
    }

    $(id) { return this.root.querySelector("#" + id); }

    bindUi() {
      const on = (id, fn) => this.$(id).addEventListener("click", fn);
      on("outpaint_undo", () => this.undo());
      on("outpaint_redo", () => this.redo());
      on("outpaint_export_visible", () => this.exportPng(this.intersect(this.visibleRect(), this.bounds()), "visible"));
      on("outpaint_export_whole", () => this.exportPng(this.bounds(), "whole"));
      on("outpaint_reset_view", () => { this.fit(); this.changed(); });
      on("outpaint_new", () => {
        if (!window.confirm("Start a new, empty canvas? The current one cannot be restored.")) return;
        Object.assign(this.state, { patches: [], redo: [], view: null });
        this.staging = null;
        this.fit();
        this.changed();
      });
      on("outpaint_prev", () => this.cycle(-1));
      on("outpaint_next", () => this.cycle(1));
      on("outpaint_accept", () => this.accept());
      on("outpaint_discard", () => this.discard());
      this.$("outpaint_upload").addEventListener("change", (e) => {
        const file = e.target.files[0];
        e.target.value = "";
        if (file) this.upload(file, this.state.box.x, this.state.box.y);
      });
      const c = this.canvas;
      c.addEventListener("pointerdown", (e) => this.pointerDown(e));
      c.addEventListener("pointermove", (e) => this.pointerMove(e));
      c.addEventListener("pointerup", (e) => this.pointerUp(e));
      c.addEventListener("pointercancel", (e) => this.pointerUp(e));
      c.addEventListener("wheel", (e) => this.wheel(e), { passive: false });
      c.addEventListener("dragover", (e) => e.preventDefault());
      c.addEventListener("drop", (e) => {
        e.preventDefault();
        const file = e.dataTransfer.files[0];
        if (!file) return;
        const at = this.local(e), p = this.toWorld(at.x, at.y);
        this.upload(file, snap(p.x), snap(p.y));
      });
    }

    // -- view ---------------------------------------------------------------------------------------
    resize() {
      const parent = this.canvas.parentElement;
      const dpr = window.devicePixelRatio || 1;
      const width = parent.clientWidth, height = parent.clientHeight;
      if (!width || !height) return;
      this.canvas.width = Math.round(width * dpr);
      this.canvas.height = Math.round(height * dpr);
      this.canvas.style.width = width + "px";
      this.canvas.style.height = height + "px";
      if (!this.state.view) this.fit();
      this.render();
    }
    get cssSize() { return { w: this.canvas.clientWidth, h: this.canvas.clientHeight }; }
    // Show the picture and the box with a margin; never magnify past 4x (tiny models make 64 px images).
    fit() {
      const r = this.union(this.bounds(), this.state.box);
      const { w, h } = this.cssSize;
      if (!w || !h) return;
      const scale = clamp(Math.min(w / (r.w * 1.6), h / (r.h * 1.6)), 0.05, 4);
      this.state.view = { x: r.x + r.w / 2 - w / 2 / scale, y: r.y + r.h / 2 - h / 2 / scale, scale };
    }
    toWorld(sx, sy) {
      const v = this.state.view;
      return { x: v.x + sx / v.scale, y: v.y + sy / v.scale };
    }
    toScreen(wx, wy) {
      const v = this.state.view, rect = this.canvas.getBoundingClientRect();
      return { x: rect.left + (wx - v.x) * v.scale, y: rect.top + (wy - v.y) * v.scale };
    }
    visibleRect() {
      const { w, h } = this.cssSize, a = this.toWorld(0, 0), b = this.toWorld(w, h);
      const x = Math.floor(a.x), y = Math.floor(a.y);
      return { x, y, w: Math.ceil(b.x) - x, h: Math.ceil(b.y) - y };
    }
    bounds() {
      const ps = this.state.patches;
      if (!ps.length) return null;
      const x0 = Math.min(...ps.map((p) => p.x)), y0 = Math.min(...ps.map((p) => p.y));
      const x1 = Math.max(...ps.map((p) => p.x + p.w)), y1 = Math.max(...ps.map((p) => p.y + p.h));
      return { x: x0, y: y0, w: x1 - x0, h: y1 - y0 };
    }
    // the part of the picture in view: no empty margins, and never a canvas larger than the picture
    intersect(a, b) {
      if (!a || !b) return null;
      const x = Math.max(a.x, b.x), y = Math.max(a.y, b.y);
      const w = Math.min(a.x + a.w, b.x + b.w) - x, h = Math.min(a.y + a.h, b.y + b.h) - y;
      return w > 0 && h > 0 ? { x, y, w, h } : null;
    }
    union(a, b) {
      if (!a) return b;
      if (!b) return a;
      const x = Math.min(a.x, b.x), y = Math.min(a.y, b.y);
      return { x, y, w: Math.max(a.x + a.w, b.x + b.w) - x, h: Math.max(a.y + a.h, b.y + b.h) - y };
    }

    // -- pointer: drag inside the box moves it (on the 8-px grid), elsewhere pans; the wheel zooms --
    local(e) {
      const rect = this.canvas.getBoundingClientRect();
      return { x: e.clientX - rect.left, y: e.clientY - rect.top };
    }
    pointerDown(e) {
      const at = this.local(e), p = this.toWorld(at.x, at.y), b = this.state.box;
      const inBox = p.x >= b.x && p.x < b.x + b.w && p.y >= b.y && p.y < b.y + b.h;
      this.drag = inBox && !this.staging && e.button === 0
        ? { kind: "box", dx: p.x - b.x, dy: p.y - b.y }
        : { kind: "pan", sx: at.x, sy: at.y, vx: this.state.view.x, vy: this.state.view.y };
      this.canvas.setPointerCapture(e.pointerId);
      this.canvas.focus({ preventScroll: true });
    }
    pointerMove(e) {
      if (!this.drag) return;
      const v = this.state.view, at = this.local(e);
      if (this.drag.kind === "box") {
        const p = this.toWorld(at.x, at.y);
        this.state.box = { ...this.state.box, x: snap(p.x - this.drag.dx), y: snap(p.y - this.drag.dy) };
      } else {
        v.x = this.drag.vx - (at.x - this.drag.sx) / v.scale;
        v.y = this.drag.vy - (at.y - this.drag.sy) / v.scale;
      }
      this.render();
    }
    pointerUp(e) {
      if (!this.drag) return;
      this.drag = null;
      this.changed();
    }
    wheel(e) {
      e.preventDefault();
      const v = this.state.view, at = this.local(e), before = this.toWorld(at.x, at.y);
      v.scale = clamp(v.scale * Math.pow(1.0015, -e.deltaY), 0.02, 16);
      v.x = before.x - at.x / v.scale;
      v.y = before.y - at.y / v.scale;
      this.render();
      this.saveSoon();
    }

    // -- drawing ------------------------------------------------------------------------------------
    render() {
      if (!this.ctx || !this.state.view) return;
      const ctx = this.ctx, v = this.state.view, dpr = window.devicePixelRatio || 1;
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
      ctx.setTransform(v.scale * dpr, 0, 0, v.scale * dpr, -v.x * v.scale * dpr, -v.y * v.scale * dpr);
      ctx.imageSmoothingEnabled = v.scale < 1;
      this.drawGrid(ctx);
      const redraw = () => this.render();
      for (const p of this.state.patches) {
        const img = imageFor(p.src, redraw);
        if (img) ctx.drawImage(img, p.x, p.y);
      }
      const s = this.staging;
      if (s) {
        const img = imageFor(s.items[s.index].src, redraw);
        if (img) ctx.drawImage(img, s.x, s.y);
      }
      const b = s || this.state.box;
      ctx.lineWidth = 2 / v.scale;
      ctx.setLineDash(s ? [] : [6 / v.scale, 4 / v.scale]);
      ctx.strokeStyle = s ? "#f97316" : "#3b82f6";
      ctx.strokeRect(b.x, b.y, b.w, b.h);
      ctx.setLineDash([]);
      ctx.fillStyle = ctx.strokeStyle;
      ctx.font = `${12 / v.scale}px sans-serif`;
      ctx.fillText(`${b.w}×${b.h}`, b.x + 4 / v.scale, b.y - 4 / v.scale);
      this.publish();
    }
    drawGrid(ctx) {
      const r = this.visibleRect(), step = this.state.view.scale < 0.25 ? 512 : 64;
      ctx.fillStyle = "rgba(127,127,127,0.08)";
      ctx.fillRect(r.x, r.y, r.w, r.h);
      ctx.strokeStyle = "rgba(127,127,127,0.25)";
      ctx.lineWidth = 1 / this.state.view.scale;
      ctx.beginPath();
      for (let x = Math.floor(r.x / step) * step; x <= r.x + r.w; x += step) { ctx.moveTo(x, r.y); ctx.lineTo(x, r.y + r.h); }
      for (let y = Math.floor(r.y / step) * step; y <= r.y + r.h; y += step) { ctx.moveTo(r.x, y); ctx.lineTo(r.x + r.w, y); }
      ctx.stroke();
    }
    // what tests and screen readers can see without reading pixels
    publish() {
      if (!this.root) return;
      const d = this.root.dataset, b = this.state.box, s = this.staging;
      d.patches = this.state.patches.length;
      d.redo = this.state.redo.length;
      d.box = `${b.x},${b.y},${b.w},${b.h}`;
      d.staging = s ? s.items.length : 0;
      d.busy = this.job ? "1" : "0";
      this.$("outpaint_undo").disabled = !this.state.patches.length;
      this.$("outpaint_redo").disabled = !this.state.redo.length;
      this.$("outpaint_staging").hidden = !s;
      if (s) this.$("outpaint_candidate").textContent = `${s.index + 1} / ${s.items.length}`;
    }

    // -- pixels -------------------------------------------------------------------------------------
    async composite(rect) {
      const out = document.createElement("canvas");
      out.width = rect.w;
      out.height = rect.h;
      const ctx = out.getContext("2d");
      ctx.imageSmoothingEnabled = false;
      for (const p of this.state.patches) {
        if (p.x >= rect.x + rect.w || p.y >= rect.y + rect.h || p.x + p.w <= rect.x || p.y + p.h <= rect.y) continue;
        ctx.drawImage(await loadImage(p.src), p.x - rect.x, p.y - rect.y);
      }
      return out;
    }
    async exportPng(rect, what) {
      if (!rect || !rect.w || !rect.h) return this.status("Nothing to export yet");
      const canvas = await this.composite(rect);
      const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
      const info = [...this.state.patches].reverse().find((p) => p.info)?.info || "";
      const png = withInfotext(new Uint8Array(await blob.arrayBuffer()), info);
      const a = document.createElement("a");
      a.href = URL.createObjectURL(new Blob([png], { type: "image/png" }));
      a.download = `easel-canvas-${what}-${new Date().toISOString().replace(/[:.]/g, "-")}.png`;
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
      this.status(`Exported ${rect.w}×${rect.h}`);
    }

    // -- steps --------------------------------------------------------------------------------------
    addPatch(patch) {
      this.state.patches.push(patch);
      this.state.redo = [];
      this.changed();
    }
    undo() {
      if (this.state.patches.length) this.state.redo.push(this.state.patches.pop());
      this.changed();
    }
    redo() {
      if (this.state.redo.length) this.state.patches.push(this.state.redo.pop());
      this.changed();
    }
    async upload(file, x, y) {
      try {
        const img = await loadImage(URL.createObjectURL(file));
        const c = document.createElement("canvas");
        c.width = img.naturalWidth;
        c.height = img.naturalHeight;
        c.getContext("2d").drawImage(img, 0, 0);
        this.addPatch({ x, y, w: c.width, h: c.height, src: c.toDataURL("image/png"), info: "" });
        this.status(`Placed ${c.width}×${c.height} at ${x}, ${y}`);
      } catch (e) {
        this.status(`Could not read ${file.name}: ${e.message}`, true);
      }
    }
    cycle(delta) {
      const s = this.staging;
      if (!s) return;
      s.index = (s.index + delta + s.items.length) % s.items.length;
      this.render();
    }
    accept() {
      const s = this.staging;
      if (!s) return;
      const item = s.items[s.index];
      this.staging = null;
      this.addPatch({ x: s.x, y: s.y, w: s.w, h: s.h, src: item.src, info: item.info });
    }
    discard() {
      this.staging = null;
      this.render();
    }
    changed() {
      this.render();
      this.saveSoon();
    }
    saveSoon() {
      clearTimeout(this.saveTimer);
      this.saveTimer = setTimeout(() => this.save(), 200);
    }
    save() {
      const { patches, redo, view, box, lastSeed } = this.state;
      this.saving = store({ patches, redo, view, box, lastSeed });
      return this.saving;
    }
    setBoxSize(w, h) {
      w = clamp(snap(Number(w) || 512), 64, 2048);
      h = clamp(snap(Number(h) || 512), 64, 2048);
      this.state.box = { ...this.state.box, w, h };
      this.changed();
    }

    // -- generation ----------------------------------------------------------------------------------
    clientId() {
      let id = localStorage.getItem("easel-client");
      if (!id) {
        id = "canvas-" + Math.random().toString(36).slice(2, 12);
        localStorage.setItem("easel-client", id);
      }
      return id;
    }
    async call(path, body) {
      const res = await fetch(API + path, {
        method: body === undefined ? "GET" : "POST",
        headers: { "Content-Type": "application/json", "X-Easel-Client": this.clientId() },
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "same-origin",
      });
      const data = await res.json().catch(() => ({}));
      if (!res.ok) throw new Error(data.message || `${res.status} ${res.statusText}`);
      return data;
    }
    async generate(names, values) {
      if (this.job) return this.status("Already generating", true);
      if (this.staging) this.discard();
      const params = Object.fromEntries(names.map((n, i) => [n, values[i]]));
      if (params.width && params.height) this.setBoxSize(params.width, params.height); // the sliders rule
      const box = { ...this.state.box };
      try {
        const pixels = await this.composite(box);
        const image = pixels.toDataURL("image/png").split(",")[1];
        const body = { ...params, width: box.w, height: box.h, image };
        if (!body.checkpoint) body.checkpoint = null;
        this.job = { id: null, box };
        this.progress({ state: "queued", progress: 0, text: "Sending the box" });
        const job = await this.call("/generate", body);
        this.job.id = job.id;
        this.poll();
      } catch (e) {
        this.job = null;
        this.error(e.message);
      }
      this.render();
    }
    async poll() {
      if (!this.job) return;
      try {
        const job = await this.call(`/jobs/${this.job.id}`);
        if (["queued", "running"].includes(job.state)) {
          this.progress(job);
          setTimeout(() => this.poll(), POLL_MS);
          return;
        }
        this.finish(job);
      } catch (e) {
        this.job = null;
        this.error(e.message);
      }
      this.render();
    }
    finish(job) {
      const box = this.job.box;
      this.job = null;
      if (job.state === "failed") return this.error(job.error || "generation failed");
      const items = (job.candidates || []).map((c) => ({ src: "data:image/png;base64," + c.image, info: c.info, seed: c.seed }));
      if (!items.length) return this.note("Interrupted: no image was finished");
      if (items[0].seed !== undefined) this.state.lastSeed = items[0].seed;
      this.staging = { ...box, items, index: 0 };
      this.note(`${items.length} candidate(s) (${job.kind}); accept one or discard`);
      this.saveSoon();
    }
    async interrupt() {
      if (!this.job || !this.job.id) return;
      try { await this.call(`/jobs/${this.job.id}/interrupt`, {}); } catch (e) { this.error(e.message); }
    }

    // -- messages ----------------------------------------------------------------------------------
    progress(job) {
      const pct = Math.round((job.progress || 0) * 100);
      this.$("outpaint_progress").innerHTML =
        `<div class="easel-progress" data-state="${job.state}"><div class="easel-progress-bar" style="width:${pct}%"></div>` +
        `<span class="easel-progress-text"></span></div>`;
      this.$("outpaint_progress").querySelector(".easel-progress-text").textContent = job.text || job.state;
    }
    message(cls, text) {
      const el = this.$("outpaint_progress");
      el.innerHTML = `<div class="${cls}"></div>`;
      el.firstChild.textContent = text;
      if (cls === "easel-error") el.firstChild.setAttribute("role", "alert");
    }
    error(text) { this.message("easel-error", text); }
    note(text) { this.message("easel-notice", text); }
    status(text) { if (this.root) this.$("outpaint_status").textContent = text; }
  }

  // One canvas per page; Gradio calls into it through this object.
  let canvas = null;
  const get = () => (canvas = canvas || new OutpaintCanvas());
  window.easelCanvas = {
    generate: (names, values) => { get().generate(names, values); },
    interrupt: () => { get().interrupt(); },
    setBoxSize: (w, h) => { get().setBoxSize(w, h); },
    lastSeed: (current) => { const s = get().state.lastSeed; return s >= 0 ? s : current; },
    worldToScreen: (x, y) => get().toScreen(x, y),
    instance: get,
  };
  const mountIfPresent = () => {
    const root = document.getElementById("outpaint_canvas_root");
    if (root && root.dataset.mounted !== "1") {
      root.dataset.mounted = "1";
      get().ready.then(() => get().mount(root));
    }
  };
  new MutationObserver(mountIfPresent).observe(document.documentElement, { childList: true, subtree: true });
  mountIfPresent();
})();
