// The photo page: upload (picker or drag and drop), show every face, correct labels, retrain.
// Plain JavaScript against the JSON API; the session cookie is HttpOnly, the CSRF token comes
// from GET /api/session and goes with every POST/PUT.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let csrf = null;

  async function token() {
    if (!csrf) {
      const r = await fetch("/api/session", { credentials: "same-origin" });
      csrf = (await r.json()).csrf;
    }
    return csrf;
  }

  function showError(message) {
    const el = $("error");
    el.textContent = message ? "error: " + message : "";
    el.hidden = !message;
  }

  async function api(method, url, body, headers) {
    const opts = { method, credentials: "same-origin", headers: Object.assign({}, headers || {}) };
    if (method !== "GET") opts.headers["X-CSRF-Token"] = await token();
    if (body !== undefined) opts.body = body;
    const r = await fetch(url, opts);
    let data = null;
    try { data = await r.json(); } catch (e) { data = { error: r.status + " " + r.statusText }; }
    if (!r.ok) throw new Error((data && data.error) || r.status + " " + r.statusText);
    return data;
  }

  const pct = (p) => Math.round(100 * p) + "%";

  function render(up) {
    $("result").hidden = false;
    $("photo").src = up.image_url;
    const faces = $("faces");
    faces.textContent = "";
    const fixes = up.corrections || {};
    $("status").textContent = up.faces.length ? up.faces.length + " face(s) found." : "No face found in this photo.";
    for (const f of up.faces) {
      const card = $("face-card").content.firstElementChild.cloneNode(true);
      card.dataset.index = f.index;
      card.querySelector(".crop").src = f.crop_url;
      card.querySelector("h3").textContent = "Face " + (f.index + 1);
      card.querySelector(".pred").textContent = "model: " + Math.round(f.age) + " years, " + f.gender + " " +
        pct(f.gender_confidence) + ", " + f.race + " " + pct(f.race_confidence) + (f.aligned ? "" : " (box crop)");
      showFix(card, fixes[String(f.index)]);
      const form = card.querySelector("form");
      form.addEventListener("submit", (ev) => { ev.preventDefault(); correct(up.id, f.index, form, card); });
      faces.appendChild(card);
    }
    $("retrain").disabled = false;
  }

  function showFix(card, fix) {
    const el = card.querySelector(".fix");
    if (!fix || !Object.keys(fix).length) { el.textContent = ""; card.classList.remove("corrected"); return; }
    const parts = [];
    if (fix.age !== undefined) parts.push(fix.age + " years");
    if (fix.gender) parts.push(fix.gender);
    if (fix.race) parts.push(fix.race);
    el.textContent = "corrected: " + parts.join(", ");
    card.classList.add("corrected");
    const form = card.querySelector("form");
    if (fix.age !== undefined) form.age.value = fix.age;
    if (fix.gender) form.gender.value = fix.gender;
    if (fix.race) form.race.value = fix.race;
  }

  async function correct(id, index, form, card) {
    const body = {};
    if (form.age.value !== "") body.age = Number(form.age.value);
    if (form.gender.value) body.gender = form.gender.value;
    if (form.race.value) body.race = form.race.value;
    if (!Object.keys(body).length) { showError("choose an age, a gender or a race first"); return; }
    try {
      const up = await api("PUT", "/api/uploads/" + id + "/faces/" + index + "/label", JSON.stringify(body),
        { "Content-Type": "application/json" });
      showError(null);
      showFix(card, up.correction);
      $("photo").src = up.image_url;
    } catch (e) { showError(e.message); }
  }

  async function upload(file) {
    if (!file) return;
    showError(null);
    $("status").textContent = "Looking for faces in " + file.name + " …";
    const form = new FormData();
    form.append("image", file, file.name);
    try {
      const up = await api("POST", "/api/uploads", form);
      history.replaceState(null, "", "#" + up.id);
      render(up);
    } catch (e) {
      $("status").textContent = "";
      showError(e.message);
    }
  }

  async function restore() {
    let id = location.hash.slice(1);
    try {
      if (!id) {
        const list = await api("GET", "/api/uploads");
        if (!list.uploads.length) return;
        id = list.uploads[0].id;
      }
      render(await api("GET", "/api/uploads/" + encodeURIComponent(id)));
    } catch (e) { /* an expired or foreign upload: start afresh */ }
  }

  async function retrain() {
    showError(null);
    try {
      const { job } = await api("POST", "/api/retrain");
      $("retrain").disabled = true;
      $("job").hidden = false;
      poll(job);
    } catch (e) { showError(e.message); }
  }

  async function poll(job) {
    let state;
    try { state = await api("GET", "/api/jobs/" + job); } catch (e) { showError(e.message); return; }
    $("job-progress").value = state.progress;
    $("job-state").textContent = state.state + (state.run_dir ? " · " + state.run_dir : "") +
      (state.error ? " · " + state.error : "");
    if (state.state === "done") { showMetrics(state.metrics); $("retrain").disabled = false; return; }
    if (state.state === "failed") { showError(state.error || "the retrain failed"); $("retrain").disabled = false; return; }
    setTimeout(() => poll(job), 1500);
  }

  function showMetrics(m) {
    const table = $("job-metrics");
    const body = table.querySelector("tbody");
    body.textContent = "";
    const fmt = (v) => (v === null || v === undefined ? "" : Number(v).toFixed(4));
    for (const f of m.figures) {
      const tr = document.createElement("tr");
      for (const v of [f.metric + (f.lower_is_better ? " (lower is better)" : ""), fmt(f.served), fmt(f.new)]) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    table.hidden = false;
  }

  $("file").addEventListener("change", (ev) => upload(ev.target.files[0]));
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (ev) => upload(ev.dataTransfer.files[0]));
  $("retrain").addEventListener("click", retrain);
  token().then(restore);
})();
