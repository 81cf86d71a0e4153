// The photo page: upload (picker, keyboard or drag and drop), show every face, correct labels,
// retrain. Plain JavaScript against the JSON API; the session cookie is HttpOnly, the CSRF
// token comes from GET /api/session and goes with every POST/PUT. A retrain job is the
// server's: after a reload the page asks for the session's current job and follows it.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let csrf = null;
  let polling = null;

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

  class ApiError extends Error {
    constructor(message, status, data) { super(message); this.status = status; this.data = data; }
  }

  async function api(method, url, body, headers) {
    const opts = { method, credentials: "same-origin", headers: Object.assign({}, headers || {}) };
    if (method !== "GET") opts.headers["X-CSRF-Token"] = await token();
    if (body !== undefined) opts.body = body;
    const r = await fetch(url, opts);
    let data = null;
    try { data = await r.json(); } catch (e) { data = { error: r.status + " " + r.statusText }; }
    if (!r.ok) throw new ApiError((data && data.error) || r.status + " " + r.statusText, r.status, data);
    return data;
  }

  const pct = (p) => Math.round(100 * p) + "%";
  const plural = (n, one, many) => n + " " + (n === 1 ? one : many);

  function render(up) {
    $("result").hidden = false;
    $("photo").src = up.image_url;
    const faces = $("faces");
    faces.textContent = "";
    const fixes = up.corrections || {};
    $("status").textContent = up.faces.length ? plural(up.faces.length, "face", "faces") + " found." :
      "No face found in this photo.";
    for (const f of up.faces) {
      const card = $("face-card").content.firstElementChild.cloneNode(true);
      const number = f.index + 1;
      card.dataset.index = f.index;
      card.querySelector(".crop").src = f.crop_url;
      card.querySelector(".crop").alt = "face " + number + " as the model saw it";
      card.querySelector("h3").textContent = "Face " + number;
      card.querySelector(".pred").textContent = "model: " + Math.round(f.age) + " years, " + f.gender + " " +
        pct(f.gender_confidence) + ", " + f.race + " " + pct(f.race_confidence) + (f.aligned ? "" : " (box crop)");
      const form = card.querySelector("form");
      form.setAttribute("aria-label", "correct face " + number);
      showFix(card, fixes[String(f.index)]);
      form.addEventListener("submit", (ev) => { ev.preventDefault(); correct(up.id, f.index, form, card); });
      card.querySelector(".clear").addEventListener("click", () => clear(up.id, f.index, form, card));
      faces.appendChild(card);
    }
    $("retrain").disabled = polling !== null;
  }

  function showFix(card, fix) {
    const el = card.querySelector(".fix");
    const form = card.querySelector("form");
    const clearButton = card.querySelector(".clear");
    if (!fix || !Object.keys(fix).length) {
      el.textContent = "";
      card.classList.remove("corrected");
      clearButton.hidden = true;
      return;
    }
    const parts = [];
    if (fix.age !== undefined) parts.push(fix.age + " years");
    if (fix.gender) parts.push(fix.gender);
    if (fix.race) parts.push(fix.race);
    el.textContent = "corrected: " + parts.join(", ");
    card.classList.add("corrected");
    clearButton.hidden = false;
    if (fix.age !== undefined) form.age.value = fix.age;
    if (fix.gender) form.gender.value = fix.gender;
    if (fix.race) form.race.value = fix.race;
  }

  async function send(id, index, body, card) {
    try {
      const up = await api("PUT", "/api/uploads/" + id + "/faces/" + index + "/label", JSON.stringify(body),
        { "Content-Type": "application/json" });
      showError(null);
      showFix(card, up.correction);
      $("photo").src = up.image_url;
      $("status").textContent = "Face " + (index + 1) + (Object.keys(up.correction).length ? " corrected." :
        ": correction cleared.");
    } catch (e) { showError(e.message); }
  }

  function correct(id, index, form, card) {
    const body = {};
    if (form.age.value !== "") body.age = Number(form.age.value);
    if (form.gender.value) body.gender = form.gender.value;
    if (form.race.value) body.race = form.race.value;
    if (!Object.keys(body).length) { showError("choose an age, a gender or a race first"); return; }
    send(id, index, body, card);
  }

  function clear(id, index, form, card) {
    form.reset();
    send(id, index, { age: null, gender: null, race: null }, card);
    form.querySelector("input, select").focus();
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

  async function restoreJob() {
    try {
      const state = await api("GET", "/api/jobs/current");
      if (state.job) follow(state.job, state);
    } catch (e) { /* no job to show */ }
  }

  async function retrain() {
    showError(null);
    try {
      const { job } = await api("POST", "/api/retrain");
      follow(job, null);
    } catch (e) {
      showError(e.message);
      if (e.status === 409 && e.data && e.data.job) follow(e.data.job, null, true);
    }
  }

  function minutes(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 90) return " · about " + plural(Math.max(1, Math.round(seconds)), "second", "seconds") + " left in this step";
    return " · about " + plural(Math.round(seconds / 60), "minute", "minutes") + " left in this step";
  }

  function follow(job, state, quiet) {
    $("job").hidden = false;
    $("retrain").disabled = true;
    polling = job;
    if (state) show(job, state); else poll(job, quiet);
  }

  function show(job, state) {
    $("job-progress").value = state.progress;
    const words = { queued: "waiting", running: "running", done: "done", failed: "failed" }[state.state] || state.state;
    $("job-state").textContent = "Retrain " + words + (state.phase && state.phase !== state.state ? ": " + state.phase : "") +
      (state.state === "running" ? minutes(state.eta_s) : "") + " (" + pct(state.progress) + ")" +
      (state.run_dir ? " · " + state.run_dir : "") + (state.error ? " · " + state.error : "");
    if (state.state === "done" || state.state === "failed") {
      polling = null;
      $("retrain").disabled = false;
      if (state.state === "done" && state.metrics) showMetrics(state.metrics);
      return;
    }
    setTimeout(() => poll(job), 1500);
  }

  async function poll(job, quiet) {
    if (polling !== job) return;
    let state;
    try { state = await api("GET", "/api/jobs/" + job); } catch (e) {
      polling = null;
      $("retrain").disabled = false;
      if (!quiet) showError(e.message);
      else $("job").hidden = true;  // another session's job: nothing to show here
      return;
    }
    show(job, state);
  }

  function showMetrics(m) {
    const table = $("job-metrics");
    const body = table.querySelector("tbody");
    body.textContent = "";
    const fmt = (v) => (v === null || v === undefined ? "" : Number(v).toFixed(4));
    for (const f of m.figures) {
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = f.metric + (f.lower_is_better ? " (lower is better)" : "");
      tr.appendChild(th);
      for (const v of [fmt(f.served), fmt(f.new)]) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    table.hidden = false;
  }

  $("file").addEventListener("change", (ev) => { upload(ev.target.files[0]); ev.target.value = ""; });
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (ev) => upload(ev.dataTransfer.files[0]));
  $("retrain").addEventListener("click", retrain);
  token().then(() => Promise.all([restore(), restoreJob()]));
})();
