// AutoWeld operator terminal. Plain JS, no libraries: polls /api/status and redraws.
// Fail safe: PASS is shown only for a result that says PASS with no error; anything else
// (FAIL, an error, an unknown value, a lost connection) never shows as a pass.
"use strict";

const POLL_MS = 500;
const TOKEN_KEY = "autoweld-token";
const $ = (id) => document.getElementById(id);
let lastNumber = null;
let searching = null; // part id being searched, or null for "latest records"
let overlayUrl = null;

// The credential travels only in the Authorization header (never a cookie), so no other site
// can make the browser send it. It lives in this tab's sessionStorage until "Sign out".
function token() { return sessionStorage.getItem(TOKEN_KEY); }
function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const t = token();
  if (t) headers.set("Authorization", "Bearer " + t);
  return fetch(path, { cache: "no-store", ...options, headers });
}
class SignInNeeded extends Error {}

async function checkSession() {
  const r = await api("/api/session");
  const s = await r.json();
  const signedIn = !!s.name;
  $("signin").hidden = !s.credentials_required || signedIn;
  $("whoami").hidden = !signedIn;
  text("whoami-name", signedIn ? `${s.name} (${s.role})` : "");
  $("upload").querySelector("button").disabled = !s.may_inspect;
  $("verify").disabled = !s.may_verify;
  const note = $("signin-note");
  if (s.credentials_required && !signedIn) {
    note.hidden = false;
    note.textContent = token() ? "Token not accepted: sign in again." : "Sign in with your token.";
  } else if (!s.credentials_required) {
    note.hidden = true;
    text("upload-status", "Uploads are off: the terminal was started without --credentials.");
  } else {
    note.hidden = true;
  }
  return s;
}

function text(id, value) { $(id).textContent = value; }
function fmt(p, digits = 3) { return (typeof p === "number" && isFinite(p)) ? p.toFixed(digits) : "n/a"; }
function localTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

function isPass(result) {
  return !!result && result.decision === "PASS" && (result.error === null || result.error === undefined);
}

function showDecision(kind, word, symbol) {
  const box = $("decision");
  box.className = "decision " + kind;
  box.dataset.decision = word;
  text("decision-word", word);
  text("decision-symbol", symbol);
}

function renderLatest(latest) {
  const err = $("decision-error");
  if (!latest) {
    showDecision("none", "WAITING", "–");
    err.hidden = true;
    $("plc-alarm").hidden = true;
    return;
  }
  if (isPass(latest)) {
    showDecision("pass", "PASS", "✔");
  } else {
    showDecision("fail", "FAIL", "✖");
  }
  if (latest.error) {
    err.hidden = false;
    err.textContent = "ERROR — " + latest.error;
  } else {
    err.hidden = true;
  }
  text("part-id", latest.part_id + (latest.source === "upload" ? "  (uploaded)" : ""));
  text("time", localTime(latest.utc_time));
  text("probability", fmt(latest.probability, 4));
  text("threshold", fmt(latest.threshold, 4));
  const models = Object.entries(latest.probabilities || {})
    .map(([name, p]) => `${name} ${fmt(p, 4)}`).join(" · ");
  text("models", models || "n/a");
  text("record", latest.record_seq === null ? "NOT WRITTEN" : "#" + latest.record_seq);
  $("plc-alarm").hidden = latest.plc_delivered !== false;
  text("plc-delivered", latest.plc_delivered === null ? "no PLC" :
       (latest.plc_delivered ? "delivered" : "NOT delivered"));
  if (latest.number !== lastNumber) {
    lastNumber = latest.number;
    const img = $("overlay");
    img.onload = () => img.classList.toggle("small", img.naturalWidth < 400);
    showOverlay(latest.number);
    loadRecords();
  }
}

function renderStatus(s) {
  text("station", s.station_id);
  const b = s.bundle;
  const bundleBox = $("bundle");
  bundleBox.textContent = b.error ? "Bundle REFUSED" :
    `Bundle ${b.category} · ${b.sha256.slice(0, 12)} · threshold ${fmt(b.threshold, 4)}`;
  bundleBox.title = b.sha256;
  text("bundle-category", b.category || "–");
  text("bundle-sha", b.sha256);
  text("bundle-threshold", b.threshold === null ? "–" :
       `${fmt(b.threshold, 4)} (${b.threshold_method || "?"})`);
  text("bundle-models", (b.models || []).join(", ") || "–");
  text("ledger-url", s.ledger);
  text("watch-folder", s.watch_folder || "none (uploads only)");
  const alarm = $("bundle-error");
  alarm.hidden = !b.error;
  alarm.textContent = b.error ? "Every part FAILS: " + b.error : "";

  const plc = $("plc");
  if (!s.plc.configured) {
    plc.className = "pill neutral"; plc.dataset.state = "none"; plc.textContent = "PLC: not configured";
  } else if (s.plc.last_delivered === false) {
    plc.className = "pill bad"; plc.dataset.state = "down"; plc.textContent = "PLC: NOT delivered";
  } else if (s.plc.last_delivered === true) {
    plc.className = "pill ok"; plc.dataset.state = "ok"; plc.textContent = "PLC: delivered";
  } else {
    plc.className = "pill neutral"; plc.dataset.state = "unused"; plc.textContent = "PLC: not used yet";
  }
  plc.title = s.plc.state;

  const fwd = $("forwarding"), f = s.forwarding;  // store and forward to a central ledger
  fwd.hidden = !f;
  if (f) {
    const good = f.state === "ok" && f.backlog_total === 0;
    fwd.className = "pill " + (good ? "ok" : (f.state === "conflict" ? "bad" : "neutral"));
    fwd.dataset.state = f.state;
    fwd.textContent = "Central: " + (f.state === "ok" ? `backlog ${f.backlog_total}` : f.state);
    fwd.title = `${f.central}: ${f.forwarded} forwarded` + (f.last_error ? ` — ${f.last_error}` : "");
  }

  const c = s.counts;
  text("count-total", c.total);
  text("count-pass", c.pass);
  text("count-fail", c.fail);
  text("count-error", c.error);
  text("rate", c.rate_per_min);
  text("yield", c.yield === null ? "–" : (100 * c.yield).toFixed(1) + " %");
  text("pending", c.pending);
  text("since", "(" + localTime(c.since_utc) + ")");
  // the decision on screen belongs to the part named under it, not to one still in the queue
  $("busy").hidden = !(c.pending > 0);
  const shown = s.latest ? "part " + s.latest.part_id : "no part yet";
  text("busy", c.pending > 0 ? `Inspecting ${c.pending} part(s)… the result shown is for ${shown}` : "");
  renderLatest(s.latest);
}

function setConnection(ok, why) {
  const el = $("connection");
  el.className = "pill " + (ok ? "ok" : "bad");
  el.dataset.state = ok ? "online" : "offline";
  el.textContent = ok ? "online" : "OFFLINE";
  el.title = why || "";
  document.body.classList.toggle("offline", !ok);
  if (!ok) {
    // never leave an old decision on screen when we cannot confirm it is current: not in the
    // panel, and not in the picture's banner either
    showDecision("none", "NO CONNECTION", "?");
    $("overlay").hidden = true;
    $("no-picture").hidden = false;
    text("no-picture", "No connection to the terminal: the last result is not shown.");
    lastNumber = null;
  }
}

async function showOverlay(number) {
  const r = await api("/api/latest.png?n=" + number);
  if (!r.ok || number !== lastNumber) return;
  if (overlayUrl) URL.revokeObjectURL(overlayUrl);
  overlayUrl = URL.createObjectURL(await r.blob());
  $("overlay").src = overlayUrl;
  $("overlay").hidden = false;
  $("no-picture").hidden = true;
}

async function poll() {
  try {
    const r = await api("/api/status");
    if (r.status === 401) throw new SignInNeeded("sign in");
    if (!r.ok) throw new Error("HTTP " + r.status);
    const s = await r.json();
    setConnection(true);
    renderStatus(s);
  } catch (e) {
    setConnection(false, String(e));
    if (e instanceof SignInNeeded) {
      text("connection", "SIGNED OUT");
      text("decision-word", "SIGN IN");
      text("no-picture", "Sign in to see the results.");
    }
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

function cell(row, value, cls) {
  const td = document.createElement("td");
  td.textContent = value;
  if (cls) td.className = cls;
  row.appendChild(td);
}

async function loadRecords() {
  const params = new URLSearchParams({ limit: "50" });
  if (searching) params.set("part_id", searching);
  const note = $("ledger-note");
  try {
    const r = await api("/api/records?" + params);
    const body = await r.json();
    if (!r.ok) throw new Error(body.detail || ("HTTP " + r.status));
    const tbody = document.querySelector("#records tbody");
    tbody.replaceChildren();
    for (const rec of body.records) {
      const tr = document.createElement("tr");
      tr.dataset.part = rec.part_id;
      tr.dataset.seq = rec.seq;
      cell(tr, rec.station_id);
      cell(tr, rec.seq);
      cell(tr, rec.utc_time);
      cell(tr, rec.part_id);
      const decision = rec.decision === "PASS" && !rec.error ? "PASS" : "FAIL";
      if (rec.signature === "valid") {
        cell(tr, decision, decision);
      } else {
        // a record whose signature does not hold proves nothing: never show it as a pass
        cell(tr, `${decision}? NOT TRUSTED`, "untrusted");
      }
      cell(tr, fmt(rec.fused_probability, 4));
      cell(tr, rec.plc_delivered === null ? "–" : (rec.plc_delivered ? "delivered" : "NOT delivered"));
      cell(tr, rec.signature === "valid" ? "✔ valid" : "✖ " + rec.signature,
           rec.signature === "valid" ? "sig-valid" : "sig-bad");
      cell(tr, rec.error || "");
      tbody.appendChild(tr);
    }
    note.textContent = searching ?
      `${body.records.length} record(s) for part ${searching}.` :
      `Latest ${body.records.length} record(s), newest first.`;
  } catch (e) {
    note.textContent = "Ledger could not be read: " + e.message;
  }
}

async function verify() {
  const button = $("verify");
  const box = $("verify-result");
  button.disabled = true;
  box.dataset.state = "running";
  box.textContent = "Verifying…";
  try {
    const r = await api("/api/verify");
    const v = await r.json();
    if (r.ok && v.ok === true) {
      box.dataset.state = "ok";
      box.textContent = `✔ Chain intact: ${v.checked} record(s), ${v.stations} station(s) ` +
        `verified at ${localTime(v.utc_time)}`;
    } else {
      box.dataset.state = "bad";
      const where = v.station_id ? ` at station ${v.station_id} record ${v.first_bad_seq}` : "";
      box.textContent = `✖ CHAIN BROKEN${where}: ${v.reason || ("HTTP " + r.status)}`;
    }
    box.title = "verified " + (v.utc_time || "");
  } catch (e) {
    box.dataset.state = "bad";
    box.textContent = "✖ Verify could not run: " + e;
  } finally {
    checkSession().catch(() => {});
    loadRecords();
  }
}

async function upload(event) {
  event.preventDefault();
  const part = $("upload-part").value.trim();
  const file = $("upload-file").files[0];
  const status = $("upload-status");
  if (!part || !file) { status.textContent = "Give a part id and an image."; return; }
  status.textContent = "Inspecting " + part + "…";
  try {
    // octet-stream and the Authorization header: not a request a form or a no-cors fetch can
    // make, so the server can refuse every kind those can send
    const r = await api("/api/inspect?part_id=" + encodeURIComponent(part), {
      method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" },
    });
    const body = await r.json();
    if (r.status === 202) status.textContent = part + ": queued";
    else if (!r.ok) status.textContent = "Not inspected: " + (body.detail || r.status);
    else status.textContent = `${part}: ${isPass(body) ? "PASS" : "FAIL"}`;
  } catch (e) {
    status.textContent = "Not inspected: " + e;
  }
}

$("signin").addEventListener("submit", async (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("signin-token").value.trim());
  $("signin-token").value = "";
  await checkSession();
  loadRecords();
});
$("signout").addEventListener("click", async () => {
  sessionStorage.removeItem(TOKEN_KEY);
  await checkSession();
});
$("verify").addEventListener("click", verify);
$("upload").addEventListener("submit", upload);
$("search").addEventListener("submit", (e) => {
  e.preventDefault();
  const v = $("search-part").value.trim();
  searching = v || null;
  loadRecords();
});
$("search-clear").addEventListener("click", () => {
  $("search-part").value = "";
  searching = null;
  loadRecords();
});
checkSession().catch(() => {}).finally(() => { poll(); loadRecords(); });
