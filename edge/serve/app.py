"""`galaxy-edge serve`: the field demo page (Flask), on the edge runtime only.

Visitors see the sky with the detector's boxes and play "you vs the machine": classify a galaxy
with the class buttons or Galaxy Zoo's questions, then see the classifier's answer, its
probabilities and where it looked. Nothing is fetched from outside (a Content-Security-Policy of
'self' enforces it), uploads are decoded in memory with size limits, and the only file written is
rounds.csv in the data folder.
"""

from __future__ import annotations

import base64
import io
import os
import random
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from flask import Flask, abort, jsonify, request, send_file, session

from edge.attention import occlusion_map, overlay
from edge.models import Classifier
from edge.serve.game import Deck, RoundLog, load_deck, tree_for
from edge.serve.sky import SkyFeed

MAX_UPLOAD_BYTES = 4 * 1024 * 1024
MAX_UPLOAD_PIXELS = 4096 * 4096
UPLOAD_FORMATS = ("JPEG", "PNG")
UPLOAD_WORKING_SIDE = 512  # pixels: an upload's longest side after decoding
TOP_K = 5


class UploadError(ValueError):
    """An uploaded image that is not accepted; the message says why."""


@dataclass
class Judge:
    """The game's classifier with a lock (an interpreter is not safe across request threads)
    and cached answers and attention maps for the deck's cards."""

    classifier: Classifier
    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: dict[str, np.ndarray] = field(default_factory=dict)
    maps: dict[str, bytes] = field(default_factory=dict)

    def look(self, image_bgr: np.ndarray) -> tuple[np.ndarray, bytes]:
        """Probabilities and the attention overlay (PNG) for one image."""
        with self.lock:
            attention = occlusion_map(self.classifier, image_bgr)
        shown = cv2.resize(image_bgr, (256, 256), interpolation=cv2.INTER_CUBIC)
        ok, png = cv2.imencode(".png", overlay(shown, attention.heat))
        if not ok:
            raise RuntimeError("could not encode the attention map")
        return attention.probabilities, png.tobytes()

    def card(self, token: str, path: Path) -> tuple[np.ndarray, bytes]:
        if token not in self.answers:
            image = cv2.imread(str(path))
            if image is None:
                raise FileNotFoundError(f"{path}: deck image unreadable")
            self.answers[token], self.maps[token] = self.look(image)
        return self.answers[token], self.maps[token]


def decode_upload(data: bytes) -> np.ndarray:
    """BGR image from uploaded bytes: JPEG or PNG only, at most MAX_UPLOAD_PIXELS, header checked
    before any pixel is decoded (no decompression bombs)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in UPLOAD_FORMATS:
                raise UploadError(f"only JPEG or PNG images are accepted (got {image.format})")
            width, height = image.size
            if width * height > MAX_UPLOAD_PIXELS:
                raise UploadError(f"image too large: {width}x{height} (at most {MAX_UPLOAD_PIXELS} pixels)")
            rgb = np.asarray(image.convert("RGB"))
    except Image.DecompressionBombError:
        raise UploadError(f"image too large (at most {MAX_UPLOAD_PIXELS} pixels)") from None
    except (UnidentifiedImageError, OSError) as error:
        raise UploadError(f"not a readable image ({type(error).__name__})") from None
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    # A phone photo is megapixels; the classifier sees 69x69. Shrink big uploads once here, with
    # OpenCV, before the exact (slower, memory-hungry) crop shrinking of the runtime.
    side = max(bgr.shape[:2])
    if side > UPLOAD_WORKING_SIDE:
        scale = UPLOAD_WORKING_SIDE / side
        bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return bgr


def _ranked(labels: list[str], titles: list[str], probabilities: np.ndarray) -> list[dict]:
    order = np.argsort(-probabilities)[:TOP_K]
    return [
        {"class": labels[i], "title": titles[i], "probability": round(float(probabilities[i]), 4)}
        for i in order
    ]


def create_app(
    classifier: Classifier,
    deck: Deck | Path,
    data_dir: Path,
    sky: SkyFeed | None = None,
    secret_key: bytes | None = None,
) -> Flask:
    """The Flask app; `sky` (already started) feeds the sky panel when given."""
    labels = list(classifier.labels)
    if not isinstance(deck, Deck):
        deck = load_deck(deck, labels)
    titles = classifier.card.raw.get("titles") or [name.replace("_", " ").capitalize() for name in labels]
    colors = classifier.card.raw.get("colors_rgb") or [[200, 200, 200]] * len(labels)
    tree = tree_for(labels)
    judge = Judge(classifier)
    log = RoundLog(data_dir)
    # Card URLs carry random tokens, not indices or names: the address gives no hint of the class.
    tokens = {secrets.token_hex(6): card for card in deck.rounds}
    order = list(tokens)

    app = Flask(__name__, static_folder="static", static_url_path="/static")
    app.config.update(
        SECRET_KEY=secret_key or os.urandom(32),
        MAX_CONTENT_LENGTH=MAX_UPLOAD_BYTES,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_HTTPONLY=True,
    )

    @app.after_request
    def _headers(response):
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.errorhandler(413)
    def _too_large(_error):
        return jsonify(error=f"upload too large (at most {MAX_UPLOAD_BYTES // 1024 // 1024} MB)"), 413

    @app.get("/")
    def index():
        return send_file(Path(app.static_folder) / "index.html", mimetype="text/html", max_age=0)

    @app.get("/api/config")
    def config():
        return jsonify(
            classes=[
                {"class": name, "title": title, "color": "#{:02x}{:02x}{:02x}".format(*color)}
                for name, title, color in zip(labels, titles, colors, strict=False)
                if name in deck.examples
            ],
            tree=tree,
            scheme=classifier.card.raw.get("scheme"),
            model=classifier.path.name,
            sky=sky is not None,
            rounds=len(order),
        )

    @app.get("/examples/<name>.jpg")
    def example(name: str):
        path = deck.examples.get(name)
        if path is None:
            abort(404)
        return send_file(path, max_age=3600)

    @app.get("/deck/<token>.jpg")
    def card_image(token: str):
        card = tokens.get(token)
        if card is None:
            abort(404)
        return send_file(card.path, max_age=3600)

    @app.get("/attention/<token>.png")
    def attention(token: str):
        card = tokens.get(token)
        if card is None or token not in session.get("seen", []):
            abort(404)  # only after the player has answered it
        _, png = judge.card(token, card.path)
        return send_file(io.BytesIO(png), mimetype="image/png", max_age=3600)

    def _score() -> dict:
        return session.setdefault("score", {"player": 0, "machine": 0, "rounds": 0})

    @app.post("/api/round")
    def new_round():
        if "player" not in session:
            session["player"] = secrets.token_hex(4)
        position = session.get("position", 0)
        if position % len(order) == 0:
            session["shuffle"] = random.getrandbits(32)
        shuffled = order[:]
        random.Random(session["shuffle"]).shuffle(shuffled)
        token = shuffled[position % len(order)]
        session["position"] = position + 1
        session["current"] = token
        return jsonify(round=session["position"], token=token, image=f"/deck/{token}.jpg", score=_score())

    @app.post("/api/answer")
    def answer():
        body = request.get_json(silent=True) or {}
        token, choice, mode = body.get("token"), body.get("answer"), body.get("mode", "buttons")
        if choice not in labels:
            return jsonify(error=f"unknown class {choice!r}"), 400
        if mode not in ("buttons", "guided"):
            return jsonify(error=f"unknown mode {mode!r}"), 400
        if token is None or token != session.get("current"):
            return jsonify(error="no such round in play: ask for a new one"), 409
        card = tokens[token]
        probabilities, _ = judge.card(token, card.path)
        machine = labels[int(np.argmax(probabilities))]
        score = _score()
        score["rounds"] += 1
        score["player"] += int(choice == card.truth)
        score["machine"] += int(machine == card.truth)
        session["score"] = score
        session["current"] = None
        session["seen"] = [*session.get("seen", [])[-50:], token]
        log.write(
            player=session["player"],
            round=score["rounds"],
            image=card.path.name,
            truth=card.truth,
            mode=mode,
            answer=choice,
            machine=machine,
            confidence=round(float(probabilities.max()), 4),
        )
        return jsonify(
            truth=card.truth,
            truth_title=titles[labels.index(card.truth)],
            player_correct=choice == card.truth,
            machine={
                "class": machine,
                "title": titles[labels.index(machine)],
                "correct": machine == card.truth,
                "ranked": _ranked(labels, titles, probabilities),
            },
            attention=f"/attention/{token}.png",
            score=score,
        )

    @app.post("/api/reset")
    def reset():
        session["score"] = {"player": 0, "machine": 0, "rounds": 0}
        return jsonify(score=session["score"])

    @app.post("/api/classify")
    def classify_upload():
        upload = request.files.get("image")
        if upload is None:
            return jsonify(error="send the image as the form field 'image'"), 400
        try:
            image = decode_upload(upload.read(MAX_UPLOAD_BYTES + 1))
        except UploadError as error:
            return jsonify(error=str(error)), 400
        probabilities, png = judge.look(image)
        return jsonify(
            ranked=_ranked(labels, titles, probabilities),
            attention="data:image/png;base64," + base64.b64encode(png).decode("ascii"),
        )

    @app.get("/sky.jpg")
    def sky_image():
        frame = sky.frame() if sky else None
        if frame is None:
            abort(404)
        return send_file(io.BytesIO(frame.jpeg), mimetype="image/jpeg", max_age=0)

    @app.get("/api/sky")
    def sky_state():
        if sky is None:
            return jsonify(enabled=False)
        frame = sky.frame()
        return jsonify(
            enabled=True,
            error=sky.error,
            number=frame.number if frame else 0,
            source=Path(frame.source).name if frame else None,
            galaxies=frame.galaxies if frame else [],
        )

    return app


def serve(app: Flask, host: str, port: int, threads: int = 4) -> None:
    """Serve with waitress (a production WSGI server, pure Python) when installed, else Flask's own."""
    try:
        from waitress import serve as waitress_serve
    except ImportError:
        app.run(host=host, port=port, threaded=True)
        return
    waitress_serve(app, host=host, port=port, threads=threads, ident="galaxy-edge")
