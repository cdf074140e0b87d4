// galaxy-edge field demo: plain JavaScript, no external assets (the page must work offline on a Pi).
"use strict";

const $ = (id) => document.getElementById(id);
let config = null;
let round = null;
let node = "start";

async function api(path, body) {
  const options = body === undefined ? { method: "POST" } : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function showScore(score) {
  $("score").textContent = `You ${score.player} · Machine ${score.machine} · ${score.rounds} round${score.rounds === 1 ? "" : "s"}`;
}

function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

function titleOf(name) {
  return config.classes.find((c) => c.class === name)?.title || name;
}

function buildButtons() {
  const box = $("buttons");
  for (const c of config.classes) {
    const button = document.createElement("button");
    button.dataset.class = c.class;
    button.style.borderLeftColor = c.color;
    const picture = document.createElement("img");
    picture.src = `/examples/${c.class}.jpg`;
    picture.alt = "";
    const label = document.createElement("span");
    label.textContent = c.title;
    button.append(picture, label);
    button.addEventListener("click", () => answer(c.class));
    box.append(button);
  }
}

function showQuestion() {
  const step = config.tree[node];
  $("question").textContent = step.question;
  const box = $("answers");
  box.replaceChildren();
  for (const a of step.answers) {
    const button = document.createElement("button");
    button.textContent = a.text;
    button.addEventListener("click", () => {
      if (a.class) answer(a.class);
      else { node = a.next; showQuestion(); }
    });
    box.append(button);
  }
}

function showMode() {
  const guided = mode() === "guided";
  $("buttons").hidden = guided;
  $("guided").hidden = !guided;
  if (guided) { node = "start"; showQuestion(); }
}

async function nextRound() {
  round = await api("/api/round");
  $("galaxy").src = round.image;
  $("round-label").textContent = `Round ${round.score.rounds + 1}: what kind of galaxy is this?`;
  $("reveal").hidden = true;
  document.querySelector(".play").hidden = false;
  showScore(round.score);
  showMode();
}

function fillBars(list, ranked) {
  list.replaceChildren();
  for (const r of ranked) {
    const item = document.createElement("li");
    const text = document.createElement("span");
    text.textContent = `${r.title} ${(100 * r.probability).toFixed(1)}%`;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.max(1, 100 * r.probability)}%`;
    item.append(text, bar);
    list.append(item);
  }
}

async function answer(choice) {
  if (!round) return;
  let result;
  try {
    result = await api("/api/answer", { token: round.token, answer: choice, mode: mode() });
  } catch (error) {
    // A round the server no longer knows (restarted, or answered in another tab): start a new one.
    await nextRound();
    $("round-label").textContent = `${error.message}: here is a new galaxy.`;
    return;
  }
  round = null;
  document.querySelector(".play").hidden = true;
  $("you").textContent = `You said ${titleOf(choice)}: ${result.player_correct ? "right!" : "not quite."}`;
  $("you").className = result.player_correct ? "good" : "bad";
  const top = result.machine.ranked[0];
  $("machine").textContent = `The machine said ${result.machine.title} (${(100 * top.probability).toFixed(0)}%): ${result.machine.correct ? "right" : "wrong"}.`;
  $("machine").className = result.machine.correct ? "good" : "bad";
  $("truth").textContent = `It is: ${result.truth_title}.`;
  $("attention").src = result.attention;
  fillBars($("probabilities"), result.machine.ranked);
  showScore(result.score);
  $("reveal").hidden = false;
}

function showTab(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.tab === name);
  for (const panel of document.querySelectorAll(".panel")) panel.hidden = panel.id !== name;
}

let skyNumber = 0;
async function refreshSky() {
  if ($("sky").hidden) return;
  const state = await (await fetch("/api/sky")).json();
  if (state.error) { $("sky-status").textContent = state.error; return; }
  if (state.number && state.number !== skyNumber) {
    skyNumber = state.number;
    $("sky-image").src = `/sky.jpg?n=${state.number}`;
    const counts = {};
    for (const g of state.galaxies) counts[g.label] = (counts[g.label] || 0) + 1;
    const named = { uncertain: "uncertain", unresolved: "too small to classify" };
    const parts = Object.entries(counts).map(([k, v]) => `${v} ${named[k] || titleOf(k)}`);
    $("sky-status").textContent = `${state.source}: ${state.galaxies.length} galaxies found${parts.length ? " (" + parts.join(", ") + ")" : ""}`;
  }
}

async function uploadImage(event) {
  event.preventDefault();
  const file = $("upload").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("image", file);
  $("upload-status").textContent = "Classifying...";
  const response = await fetch("/api/classify", { method: "POST", body: form });
  const data = await response.json();
  if (!response.ok) { $("upload-status").textContent = data.error; return; }
  $("upload-status").textContent = `The machine says: ${data.ranked[0].title}`;
  $("upload-preview").src = URL.createObjectURL(file);
  $("upload-preview").hidden = false;
  $("upload-attention").src = data.attention;
  $("upload-attention").hidden = false;
  fillBars($("upload-probabilities"), data.ranked);
}

async function start() {
  config = await (await fetch("/api/config")).json();
  buildButtons();
  if (!config.tree) $("guided-choice").hidden = true;
  if (!config.sky) $("sky-tab").hidden = true;
  for (const radio of document.querySelectorAll('input[name="mode"]')) radio.addEventListener("change", showMode);
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => { showTab(tab.dataset.tab); refreshSky(); });
  $("next").addEventListener("click", nextRound);
  $("upload-form").addEventListener("submit", uploadImage);
  setInterval(refreshSky, 1000);
  await nextRound();
}

start();
