// The node's web console: status, objects, uploads, folders, peers and live traffic, all from
// the node's own routes. No framework, no build step; served from the binary. Text from the
// node is only ever set as textContent, never as HTML.
"use strict";

const COLLECTION = "application/vnd.ron.collection+cbor";
const $ = (id) => document.getElementById(id);
let token = null;
let after = null;
let rows = [];

function el(tag, attrs, ...kids) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick") node.addEventListener("click", v);
    else if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const kid of kids) node.append(kid);
  return node;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(Math.round(n))) + " " + units[i];
}

function when(secs) {
  return secs ? new Date(secs * 1000).toISOString().replace("T", " ").slice(0, 19) : "–";
}

// The token: from the URL fragment (`ron console`), or pasted; kept for this tab only.
function loadToken() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("ron_token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  token = sessionStorage.getItem("ron_token");
  $("token-state").textContent = token ? "token set: writes allowed" : "no token: reading only";
}

function authHeaders(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h.Authorization = "Bearer " + token;
  return h;
}

async function api(path, opts) {
  opts = Object.assign({}, opts || {});
  opts.headers = authHeaders(opts.headers);
  const res = await fetch(path, opts);
  if (!res.ok) {
    let message = "HTTP " + res.status;
    try {
      const body = await res.json();
      message = body.message + " (" + body.code + ")";
    } catch (_) { /* not JSON */ }
    const err = new Error(message);
    err.status = res.status;
    throw err;
  }
  return res;
}

function definitions(dl, pairs) {
  dl.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));
}

async function refreshStatus() {
  try {
    const s = await (await api("/status")).json();
    $("node-id").textContent = s.node_id;
    $("node-version").textContent = "v" + s.version;
    $("node-uptime").textContent = "up " + Math.round(s.uptime_s) + " s";
    const st = s.storage || {};
    definitions($("storage"), [
      ["objects", st.objects],
      ["chunks", st.chunks],
      ["stored", bytes(st.bytes_stored || 0)],
      ["logical", bytes(st.bytes_logical || 0)],
      ["saved by dedup", bytes(st.bytes_saved || 0)],
    ]);
    const p2p = s.p2p;
    if (p2p) {
      definitions($("p2p"), [
        ["peer id", p2p.peer_id],
        ["reachability", p2p.nat],
        ["known peers", p2p.known],
        ["connected", (p2p.peers || []).length],
      ]);
      $("peers").replaceChildren(...(p2p.peers || []).map((p) => el("li", {}, el("code", {}, p))));
    } else {
      definitions($("p2p"), [["peer network", "off"]]);
    }
  } catch (e) {
    $("node-id").textContent = "unreachable: " + e.message;
  }
}

function objectRow(o) {
  const tr = el("tr", { "data-address": o.address });
  const actions = el("td", { class: "actions" },
    el("a", { href: "/o/" + o.address, target: "_blank", rel: "noopener" }, "open"),
    el("a", { href: "/o/" + o.address, download: o.address.slice(3) }, "download"),
  );
  if (o.media_type === COLLECTION) {
    actions.append(el("button", { onclick: () => browse(o.address, []) }, "browse"));
  }
  actions.append(
    el("button", { onclick: () => setPinned(o, !o.pinned) }, o.pinned ? "unpin" : "pin"),
    el("button", { onclick: () => remove(o) }, "delete"),
  );
  tr.append(
    el("td", {}, el("code", { class: "addr" }, o.address)),
    el("td", { class: "n" }, bytes(o.size)),
    el("td", {}, (o.media_type || "–") + (o.pinned ? "" : " (unpinned)")),
    el("td", {}, when(o.stored_at)),
    actions,
  );
  return tr;
}

function renderObjects() {
  const q = $("search").value.trim().toLowerCase();
  const shown = rows.filter((o) => !q || o.address.includes(q));
  $("objects").tBodies[0].replaceChildren(...shown.map(objectRow));
  $("objects-count").textContent = "(" + rows.length + (after ? "+" : "") + ")";
}

async function loadObjects(more) {
  const note = $("objects-note");
  if (!more) { rows = []; after = null; }
  try {
    const url = "/objects?limit=100" + (after ? "&after=" + after : "");
    const page = await (await api(url)).json();
    rows = rows.concat(page.objects);
    after = page.next;
    note.textContent = "";
    note.className = "note";
  } catch (e) {
    note.textContent = e.status === 401 || e.status === 403
      ? "Listing needs a token that allows list: paste one above (ron console makes one)."
      : "Cannot list: " + e.message;
    note.className = e.status === 401 ? "note" : "note error";
  }
  $("more").hidden = !after;
  renderObjects();
}

async function searchAddress() {
  renderObjects();
  const q = $("search").value.trim().toLowerCase();
  if (!/^b3:[0-9a-f]{64}$/.test(q) || rows.some((o) => o.address === q)) return;
  try {
    const s = await (await api("/stat/" + q)).json();
    $("objects").tBodies[0].replaceChildren(objectRow({
      address: s.address, size: s.size, media_type: s.media_type, pinned: s.pinned, stored_at: null,
    }));
  } catch (e) {
    $("objects-note").textContent = q + ": " + e.message;
  }
}

async function setPinned(o, pinned) {
  try {
    await api("/pin/" + o.address, { method: pinned ? "POST" : "DELETE" });
    o.pinned = pinned;
    renderObjects();
  } catch (e) {
    $("objects-note").textContent = "Cannot change the pin: " + e.message;
  }
}

async function remove(o) {
  if (!confirm("Delete " + o.address + " from this node?")) return;
  try {
    await api("/o/" + o.address, { method: "DELETE" });
    rows = rows.filter((r) => r.address !== o.address);
    renderObjects();
    refreshStatus();
  } catch (e) {
    $("objects-note").textContent = "Cannot delete: " + e.message;
  }
}

function upload(file) {
  const bar = el("progress", { max: String(file.size || 1), value: "0" });
  const result = el("span", {}, "uploading…");
  const li = el("li", {}, el("span", {}, file.name), el("div", {}, bar, result));
  $("uploads").prepend(li);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/put");
  if (token) xhr.setRequestHeader("Authorization", "Bearer " + token);
  if (file.type) xhr.setRequestHeader("Content-Type", file.type);
  xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) bar.value = e.loaded; });
  xhr.addEventListener("load", () => {
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
    if (xhr.status === 200 || xhr.status === 201) {
      bar.value = bar.max;
      li.setAttribute("data-address", body.address);
      result.replaceChildren(el("a", { href: "/o/" + body.address, target: "_blank", rel: "noopener" },
        el("code", { class: "addr" }, body.address)));
      loadObjects(false);
      refreshStatus();
    } else {
      result.textContent = "refused: " + (body.message || "HTTP " + xhr.status);
      result.className = "error";
    }
  });
  xhr.addEventListener("error", () => { result.textContent = "the upload failed"; result.className = "error"; });
  xhr.send(file);
}

function segmentsUrl(root, path) {
  return "/o/" + root + "/" + path.map(encodeURIComponent).map((s) => s + "/").join("");
}

async function browse(root, path) {
  $("folder-section").hidden = false;
  const crumbs = $("crumbs");
  crumbs.replaceChildren(el("a", { href: "#", onclick: (e) => { e.preventDefault(); browse(root, []); } }, root.slice(0, 12) + "…"));
  path.forEach((name, i) => {
    crumbs.append(" / ", el("a", { href: "#", onclick: (e) => { e.preventDefault(); browse(root, path.slice(0, i + 1)); } }, name));
  });
  const body = $("folder").tBodies[0];
  try {
    const listing = await (await api(segmentsUrl(root, path), { headers: { Accept: "application/json" } })).json();
    body.replaceChildren(...listing.entries.map((e) => {
      const name = e.kind === "folder"
        ? el("a", { href: "#", onclick: (ev) => { ev.preventDefault(); browse(root, path.concat([e.name])); } }, e.name + "/")
        : el("a", { href: segmentsUrl(root, path) + encodeURIComponent(e.name), target: "_blank", rel: "noopener" }, e.name);
      return el("tr", {}, el("td", {}, name), el("td", { class: "n" }, bytes(e.size)),
        el("td", {}, e.kind === "folder" ? "folder" : (e.media_type || "–")));
    }));
  } catch (e) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: "3", class: "error" }, e.message)));
  }
}

// Live plots from /metrics: totals of counters, turned into rates between two scrapes.
const HISTORY = 60;
const series = { rps: [], in: [], out: [], lat: [] };
let last = null;

function totals(text) {
  const sums = {};
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([0-9.eE+-]+|NaN)/);
    if (m) sums[m[1]] = (sums[m[1]] || 0) + Number(m[3]);
  }
  return sums;
}

function draw(canvas, values) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  if (values.length < 2) return;
  const max = Math.max(1e-9, ...values);
  ctx.strokeStyle = "#2b6cb0";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  values.forEach((v, i) => {
    const x = (i / (HISTORY - 1)) * w;
    const y = h - 4 - (v / max) * (h - 8);
    if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
  });
  ctx.stroke();
}

async function scrape() {
  try {
    const now = performance.now() / 1000;
    const t = totals(await (await api("/metrics")).text());
    if (last) {
      const dt = Math.max(0.001, now - last.at);
      const d = (k) => Math.max(0, (t[k] || 0) - (last.t[k] || 0));
      const count = d("request_latency_seconds_count");
      const point = {
        rps: count / dt,
        in: d("object_bytes_received_total") / dt,
        out: d("object_bytes_sent_total") / dt,
        lat: count ? (d("request_latency_seconds_sum") / count) * 1000 : 0,
      };
      for (const k of Object.keys(series)) {
        series[k].push(point[k]);
        if (series[k].length > HISTORY) series[k].shift();
        draw($("p-" + k), series[k]);
      }
      $("v-rps").textContent = point.rps.toFixed(1);
      $("v-in").textContent = bytes(point.in);
      $("v-out").textContent = bytes(point.out);
      $("v-lat").textContent = point.lat.toFixed(2);
    }
    last = { at: now, t };
  } catch (_) { /* the next scrape tries again */ }
}

function wire() {
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const value = $("token").value.trim();
    if (value) sessionStorage.setItem("ron_token", value);
    $("token").value = "";
    loadToken();
    loadObjects(false);
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem("ron_token");
    loadToken();
    loadObjects(false);
  });
  $("file").addEventListener("change", (e) => { for (const f of e.target.files) upload(f); e.target.value = ""; });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    for (const f of e.dataTransfer.files) upload(f);
  });
  $("search").addEventListener("input", searchAddress);
  $("refresh").addEventListener("click", () => loadObjects(false));
  $("more").addEventListener("click", () => loadObjects(true));
  $("close-folder").addEventListener("click", () => { $("folder-section").hidden = true; });
}

loadToken();
wire();
refreshStatus();
loadObjects(false);
scrape();
setInterval(refreshStatus, 5000);
setInterval(scrape, 2000);
