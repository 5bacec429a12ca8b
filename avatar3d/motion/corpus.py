"""A synthetic speech -> mouth-motion corpus, built without rendering any video.

Why synthetic: the mouth curves of the synthetic subject are *known* (they are
made from the phone timeline by :func:`avatar3d.synth.visemes.expression_curves`),
so a model can be trained and scored against exact ground truth for any
number of voices, speeds and pitches.  Why no video: the motion model only
needs audio features and the curves; rendering would cost ~100x the time.

Each utterance: leading silence, one or two English sentences (espeak-ng,
one voice = accent + optional variant, a speed and a pitch) with a pause
between, trailing silence; a random gain and sometimes a faint noise floor.
Every sentence is force-aligned with pocketsphinx, the phone timeline is
turned into the 16 mouth blendshape curves at ``fps`` and the weight-free
audio features are computed.

Held-out voices: ``held_out_accents`` and ``held_out_variants`` never appear
in the training split; the test split only uses voices with at least one
held-out part, speaking sentences generated from a separate random stream.

On disk (``corpus_dir``)::

    index.json               config, voices, per-utterance metadata, shard list
    train-00000.npz ...      shards (see ``_SHARD_KEYS``), written atomically
    test-00000.npz ...

Deterministic for a given config (and installed espeak-ng / pocketsphinx):
the plan is drawn from ``seed`` up front and each utterance has its own
``default_rng([seed, split, index])``.
"""
from __future__ import annotations

import dataclasses
import json
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from avatar3d.audio.alignment import align_phones, reset_aligners
from avatar3d.audio.features import AudioFeatureConfig, frame_features, frontend_name, log_mel
from avatar3d.audio.phones import SIL, Phone, fill_silence
from avatar3d.errors import Avatar3DError
from avatar3d.face.blendshape_names import MOUTH_BLENDSHAPES
from avatar3d.io.atomic import save_npz_atomic, write_json_atomic
from avatar3d.synth.sentences import SENTENCES
from avatar3d.synth.speech import list_variants, resolve_voice, synthesize
from avatar3d.synth.visemes import expression_curves

CORPUS_VERSION = 1
SPLITS = ("train", "test")
_SHARD_KEYS = ("log_mel", "mel_offsets", "f0_hz", "voiced_fraction", "energy_db", "targets", "frame_offsets")

ACCENTS: tuple[str, ...] = (
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-us-nyc", "en-029",
)
"""espeak-ng English accents (all pocketsphinx can force-align: the alignment is English-only)."""
EXCLUDED_VARIANTS: tuple[str, ...] = ("whisper", "whisperf", "Demonic", "croak")
"""Variants never used: whispered speech has no voicing and garbles alignment; the others are effects."""


@dataclass(frozen=True)
class CorpusConfig:
    """What a corpus is made of (saved in its index; the same config gives the same corpus)."""

    n_train: int = 1200
    """Training utterances."""
    n_test: int = 160
    """Held-out-voice test utterances."""
    seed: int = 0
    """Seed of the plan and of every per-utterance random choice."""
    fps: float = 25.0
    """Frame rate of the ground-truth curves and of the per-frame features."""
    accents: tuple[str, ...] = ACCENTS
    """Base voices used."""
    held_out_accents: tuple[str, ...] = ("en-029",)
    """Base voices that only appear in the test split."""
    held_out_variants: tuple[str, ...] = ("f4", "m3")
    """Voice variants that only appear in the test split."""
    variants: tuple[str, ...] | None = None
    """Variants to draw from (None: every installed one except ``EXCLUDED_VARIANTS``)."""
    no_variant_probability: float = 0.2
    """Chance of the plain accent without a variant."""
    words_per_minute: tuple[int, int] = (120, 260)
    """Speaking-rate range."""
    pitch: tuple[int, int] = (15, 85)
    """espeak-ng pitch range (0-99)."""
    max_sentences: int = 2
    """Sentences per utterance (1..max, uniform)."""
    lead_silence_s: tuple[float, float] = (0.15, 0.8)
    """Silence before the speech."""
    pause_s: tuple[float, float] = (0.25, 0.9)
    """Silence between sentences."""
    tail_silence_s: tuple[float, float] = (0.2, 0.8)
    """Silence after the speech."""
    gain_db: tuple[float, float] = (-20.0, 0.0)
    """Random gain applied to the speech (peak-normalised first)."""
    noise_probability: float = 0.5
    """Chance of adding a faint white-noise floor (so silence is not always digital zero)."""
    noise_db: tuple[float, float] = (-80.0, -55.0)
    """RMS level range of that noise floor (dB re full scale)."""
    generated_sentences: int = 400
    """Generated sentences added to ``SENTENCES`` for training (a separate set is generated for test)."""
    shard_utterances: int = 200
    """Utterances per shard file."""
    sample_rate: int = 16000
    """Audio rate (Hz)."""

    def __post_init__(self) -> None:
        if self.n_train < 1 or self.n_test < 0:
            raise Avatar3DError(f"corpus needs n_train >= 1 and n_test >= 0 (got {self.n_train}, {self.n_test})")
        if not self.fps > 0 or self.shard_utterances < 1 or self.max_sentences < 1:
            raise Avatar3DError("corpus fps, shard_utterances and max_sentences must be positive")
        if not set(self.held_out_accents) <= set(self.accents):
            raise Avatar3DError(f"held-out accents {self.held_out_accents} must be among accents {self.accents}")
        if not set(self.accents) - set(self.held_out_accents):
            raise Avatar3DError("every accent is held out: keep at least one for training")


# --- sentences -------------------------------------------------------------------------------

_NAMES = ("Bob", "Mary", "Peter", "Emma", "David", "Molly", "Tom", "Paula", "Ben", "Maggie", "Sam", "Lucy",
          "James", "Anna", "Mike", "Rose")
_ADJ = ("big", "small", "old", "warm", "bright", "blue", "brown", "purple", "happy", "quiet", "busy", "empty",
        "heavy", "soft", "famous", "lovely", "broken", "yellow", "cheap", "huge", "pretty", "funny")
_NOUNS = ("boat", "map", "book", "apple", "bottle", "window", "mountain", "piano", "umbrella", "basket",
          "puppy", "pumpkin", "camera", "table", "bridge", "garden", "chair", "letter", "kitchen", "rabbit",
          "bicycle", "picture", "pillow", "mirror", "blanket", "muffin", "jacket", "wagon", "shoe", "phone")
_PLACES = ("park", "market", "beach", "harbour", "office", "village", "museum", "bakery", "school", "river",
           "city", "farm", "station", "hospital", "library", "forest")
_PAST = ("bought", "found", "moved", "painted", "brought", "took", "washed", "opened", "fixed", "watched",
         "kept", "lost", "sold", "made", "showed", "carried")
_BASE = ("buy", "find", "move", "paint", "bring", "take", "wash", "open", "fix", "watch", "keep", "sell",
         "make", "show", "carry", "borrow")
_MODALS = ("will", "might", "should", "could", "would", "must")
_TIMES = ("tomorrow morning", "before lunch", "every week", "at midnight", "on Monday", "after the movie",
          "by the weekend", "next summer", "in a moment", "right away")
_PREPS = ("in", "near", "behind", "beside", "above", "under", "by", "from")
_NUMBERS = ("two", "three", "four", "five", "seven", "nine", "many", "some")
_PRONOUNS = ("I", "We", "You", "They", "She", "He")
_TEMPLATES = (
    "{name} {past} the {adj} {noun} {prep} the {place}.",
    "{pron} {modal} {base} a {adj} {noun} {time}.",
    "Did {name} {base} the {noun} {prep} the {place}?",
    "{name} and {name2} {past} {num} {adj} {noun}s.",
    "The {adj} {noun} was {prep} the {place} {time}.",
    "Please {base} my {adj} {noun} to the {place}.",
    "Maybe {name} {past} the {noun} and the {noun2}.",
    "Why is the {noun} so {adj} {time}?",
    "{pron} {past} a {adj} {noun} at the {place}, and {name} {past} it.",
)


def generate_sentences(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` English sentences recombined from fixed word lists (all common cmudict words).

    Why: twenty fixed sentences would let a model memorise their rhythm; these
    vary phone sequences while staying English, which the aligner needs.
    """
    def pick(words: tuple[str, ...]) -> str:
        return words[int(rng.integers(len(words)))]

    out = []
    for _ in range(int(n)):
        template = pick(_TEMPLATES)
        name, name2 = rng.choice(len(_NAMES), size=2, replace=False)
        noun, noun2 = rng.choice(len(_NOUNS), size=2, replace=False)
        out.append(template.format(
            name=_NAMES[name], name2=_NAMES[name2], adj=pick(_ADJ), noun=_NOUNS[noun], noun2=_NOUNS[noun2],
            place=pick(_PLACES), past=pick(_PAST), base=pick(_BASE), modal=pick(_MODALS), time=pick(_TIMES),
            prep=pick(_PREPS), num=pick(_NUMBERS), pron=pick(_PRONOUNS)))
    return out


# --- the plan ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class UtteranceSpec:
    """One planned utterance: everything needed to make it, independent of the others."""

    split: str
    index: int
    voice: str
    accent: str
    variant: str
    words_per_minute: int
    pitch: int
    sentences: tuple[str, ...]


def voice_sets(config: CorpusConfig) -> tuple[list[str], list[str]]:
    """(training variants, held-out variants) that exist in the installed espeak-ng ("" = no variant)."""
    installed = list_variants()
    by_lower = {v.lower(): v for v in installed}
    for v in config.held_out_variants:
        if v.lower() not in by_lower:
            raise Avatar3DError(f"held-out variant {v!r} is not installed in espeak-ng; "
                                f"pick from {', '.join(installed[:8])}, ...")
    held = sorted({by_lower[v.lower()] for v in config.held_out_variants})
    pool = config.variants if config.variants is not None else installed
    excluded = {v.lower() for v in EXCLUDED_VARIANTS} | {v.lower() for v in held}
    train = sorted({by_lower[v.lower()] for v in pool if v.lower() in by_lower and v.lower() not in excluded},
                   key=str.lower)
    missing = [v for v in pool if v.lower() not in by_lower]
    if missing:
        raise Avatar3DError(f"variants {missing} are not installed in espeak-ng (`espeak-ng --voices=variant`)")
    if not train:
        raise Avatar3DError("no training variants left after removing the held-out and excluded ones")
    return train, held


def plan(config: CorpusConfig) -> list[UtteranceSpec]:
    """Every utterance of the corpus, drawn from ``config.seed`` (no audio is made here)."""
    train_variants, held_variants = voice_sets(config)
    train_accents = [a for a in config.accents if a not in config.held_out_accents]
    held_accents = list(config.held_out_accents)
    for a in config.accents:
        resolve_voice(a)  # one-line error for an accent espeak-ng lacks
    rng = np.random.default_rng([config.seed, 0])
    train_text = list(SENTENCES) + generate_sentences(config.generated_sentences, np.random.default_rng([config.seed, 1]))
    test_text = generate_sentences(max(50, config.n_test * config.max_sentences),
                                   np.random.default_rng([config.seed, 2]))
    specs: list[UtteranceSpec] = []

    def draw(split: str, index: int, accents: list[str], variants: list[str], texts: list[str]) -> UtteranceSpec:
        accent = accents[int(rng.integers(len(accents)))]
        variant = "" if rng.random() < config.no_variant_probability or not variants \
            else variants[int(rng.integers(len(variants)))]
        n_sent = int(rng.integers(1, config.max_sentences + 1))
        chosen = tuple(texts[int(i)] for i in rng.choice(len(texts), size=n_sent, replace=False))
        return UtteranceSpec(split, index, accent + ("+" + variant if variant else ""), accent, variant,
                             int(rng.integers(config.words_per_minute[0], config.words_per_minute[1] + 1)),
                             int(rng.integers(config.pitch[0], config.pitch[1] + 1)), chosen)

    for i in range(config.n_train):
        specs.append(draw("train", i, train_accents, train_variants, train_text))
    for i in range(config.n_test):
        # every test voice has at least one held-out part: accent, variant, or both
        mode = i % 3 if held_accents and held_variants else (0 if held_accents else 1)
        accents = held_accents if mode in (0, 2) else train_accents
        variants = held_variants if mode in (1, 2) else train_variants
        spec = draw("test", i, accents, variants, test_text)
        if mode in (1, 2) and not spec.variant:  # the plain accent would not be held out
            v = held_variants[int(rng.integers(len(held_variants)))]
            spec = dataclasses.replace(spec, variant=v, voice=f"{spec.accent}+{v}")
        specs.append(spec)
    return specs


# --- making one utterance ----------------------------------------------------------------------

def utterance_audio(spec: UtteranceSpec, config: CorpusConfig, *, align: bool = False
                    ) -> tuple[np.ndarray, list[Phone], int]:
    """(audio float32 [n_frames * sr / fps], phone timeline or [] unless ``align``, n_frames) of one utterance.

    The same samples :func:`make_utterance` computes its features from (same
    random stream): a corpus stores only features, so a front-end that needs the
    waveform (a speech encoder) re-speaks it from the index without aligning.
    """
    sr = config.sample_rate
    rng = np.random.default_rng([config.seed, SPLITS.index(spec.split) + 10, spec.index])
    cursor = float(rng.uniform(*config.lead_silence_s))
    chunks = [np.zeros(int(round(cursor * sr)), np.float32)]
    cursor = len(chunks[0]) / sr
    phones: list[Phone] = []
    for k, sentence in enumerate(spec.sentences):
        audio = synthesize(sentence, voice=spec.voice, words_per_minute=spec.words_per_minute, pitch=spec.pitch,
                           sample_rate=sr)
        if align:
            phones += [Phone(p.start + cursor, p.end + cursor, p.label)
                       for p in align_phones(audio, sr, sentence, language="en")]
        gap = config.pause_s if k + 1 < len(spec.sentences) else config.tail_silence_s
        silence = np.zeros(int(round(float(rng.uniform(*gap)) * sr)), np.float32)
        chunks += [audio, silence]
        cursor += (len(audio) + len(silence)) / sr
    n_frames = int(round(cursor * config.fps))
    total = int(round(n_frames * sr / config.fps))
    audio = np.concatenate(chunks)
    audio = np.pad(audio, (0, max(0, total - len(audio))))[:total]
    peak = float(np.max(np.abs(audio))) or 1.0
    audio = audio / peak * 10.0 ** (float(rng.uniform(*config.gain_db)) / 20.0)
    if rng.random() < config.noise_probability:
        audio = audio + rng.standard_normal(len(audio)).astype(np.float32) * 10.0 ** (
            float(rng.uniform(*config.noise_db)) / 20.0)
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
    return audio, phones, n_frames


def make_utterance(spec: UtteranceSpec, config: CorpusConfig) -> dict[str, np.ndarray]:
    """Speak, align, make ground-truth curves and features for one planned utterance."""
    sr = config.sample_rate
    audio, phones, n_frames = utterance_audio(spec, config, align=True)
    total = len(audio)
    timeline = fill_silence(phones, total / sr)
    curves = expression_curves(timeline, config.fps, n_frames, rng=np.random.default_rng([config.seed, 3, spec.index,
                                                                                          SPLITS.index(spec.split)]))
    feats = frame_features(audio, config.fps, n_frames, AudioFeatureConfig(sample_rate=sr))
    return {
        "log_mel": feats["log_mel"].astype(np.float16),
        "f0_hz": feats["f0_hz"],
        "voiced_fraction": feats["voiced_fraction"],
        "energy_db": feats["energy_db"],
        "targets": np.stack([curves[k] for k in MOUTH_BLENDSHAPES], axis=1).astype(np.float32),
    }


def make_shard(specs: list[UtteranceSpec], config: CorpusConfig,
               on_item: Callable[[], None] | None = None) -> list[dict[str, np.ndarray]]:
    """Make a shard's utterances in order, from fresh aligners (reproducible whatever ran before)."""
    reset_aligners()  # a shard is reproducible whatever ran before it in this process
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # short clips: extra threads only add overhead (and contend with the other workers)
    try:
        items = []
        for spec in specs:
            items.append(make_utterance(spec, config))
            if on_item is not None:
                on_item()
    finally:
        torch.set_num_threads(threads)
    return items


def _make_shard_job(args: tuple[list[UtteranceSpec], CorpusConfig]) -> list[dict[str, np.ndarray]]:
    return make_shard(*args)


# --- building and reading ------------------------------------------------------------------------

def _write_shard(path: Path, items: list[dict[str, np.ndarray]]) -> None:
    mel_off = np.cumsum([0] + [len(u["log_mel"]) for u in items]).astype(np.int64)
    frame_off = np.cumsum([0] + [len(u["targets"]) for u in items]).astype(np.int64)
    save_npz_atomic(path, log_mel=np.concatenate([u["log_mel"] for u in items]), mel_offsets=mel_off,
                    f0_hz=np.concatenate([u["f0_hz"] for u in items]),
                    voiced_fraction=np.concatenate([u["voiced_fraction"] for u in items]),
                    energy_db=np.concatenate([u["energy_db"] for u in items]),
                    targets=np.concatenate([u["targets"] for u in items]), frame_offsets=frame_off)


def build_corpus(out_dir: str | Path, config: CorpusConfig = CorpusConfig(), *, workers: int = 1,
                 progress: bool = True) -> dict:
    """Make the corpus in ``out_dir``; returns the index (also written as ``index.json``).

    Shards that already exist with the same config are kept (a killed build
    resumes); the index is written last, so a corpus with an index is complete.
    ``workers`` > 1 makes whole shards in parallel processes (each shard is
    reproducible on its own, so the result does not depend on scheduling).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / "index.json"
    cfg_dict = _config_dict(config)
    if index_path.is_file():
        old = json.loads(index_path.read_text())
        if old.get("config") == cfg_dict and old.get("version") == CORPUS_VERSION:
            return old
        raise Avatar3DError(f"{out}: holds a corpus built with another config; use an empty folder")
    specs = plan(config)
    started = time.perf_counter()
    jobs: list[tuple[str, str, list[UtteranceSpec]]] = []  # (shard file, split, specs)
    for split in SPLITS:
        split_specs = [s for s in specs if s.split == split]
        for shard_no, first in enumerate(range(0, len(split_specs), config.shard_utterances)):
            jobs.append((f"{split}-{shard_no:05d}.npz", split, split_specs[first:first + config.shard_utterances]))
    bar = tqdm(total=len(specs), disable=not progress, desc="corpus", unit="utt")
    done: dict[str, list[dict[str, np.ndarray]]] = {}
    todo = []
    for name, _split, chunk in jobs:
        items = _load_shard_items(out / name, len(chunk), cfg_dict)
        if items is None:
            todo.append((name, chunk))
        else:
            done[name] = items
            bar.update(len(chunk))

    def finish(name: str, items: list[dict[str, np.ndarray]]) -> None:
        _write_shard(out / name, items)
        write_json_atomic(out / (name + ".json"), {"config": cfg_dict, "n": len(items)})
        done[name] = items

    try:
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(_make_shard_job, (chunk, config)): name for name, chunk in todo}
                for fut in as_completed(futures):
                    items = fut.result()
                    finish(futures[fut], items)
                    bar.update(len(items))
        else:
            for name, chunk in todo:
                finish(name, make_shard(chunk, config, on_item=lambda: bar.update(1)))
    finally:
        bar.close()
    shards: list[dict] = []
    utterances: list[dict] = []
    for name, split, chunk in jobs:
        shards.append({"file": name, "split": split, "n": len(chunk)})
        for pos, (s, u) in enumerate(zip(chunk, done[name])):
            utterances.append({**asdict(s), "shard": name, "position": pos, "n_frames": int(len(u["targets"])),
                               "duration_s": round(len(u["targets"]) / config.fps, 3)})
    frames = {sp: sum(u["n_frames"] for u in utterances if u["split"] == sp) for sp in SPLITS}
    train_variants, held_variants = voice_sets(config)
    index = {
        "version": CORPUS_VERSION, "config": cfg_dict, "frontend": frontend_name(AudioFeatureConfig(
            sample_rate=config.sample_rate)), "blendshapes": list(MOUTH_BLENDSHAPES),
        "train_voices": {"accents": [a for a in config.accents if a not in config.held_out_accents],
                         "variants": train_variants},
        "held_out_voices": {"accents": list(config.held_out_accents), "variants": held_variants},
        "frames": frames, "hours": {sp: round(frames[sp] / config.fps / 3600.0, 4) for sp in SPLITS},
        "build_seconds": round(time.perf_counter() - started, 1), "shards": shards, "utterances": utterances,
    }
    write_json_atomic(index_path, index)
    return read_index(out)  # as every later reader sees it (tuples become lists)


def _config_dict(config: CorpusConfig) -> dict:
    return json.loads(json.dumps(asdict(config)))  # tuples -> lists, as they read back from json


def _load_shard_items(path: Path, n: int, cfg_dict: dict) -> list[dict[str, np.ndarray]] | None:
    """A finished shard from an earlier (killed) build with the same config, split back into utterances."""
    meta = path.with_name(path.name + ".json")
    if not (path.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    if info.get("config") != cfg_dict or info.get("n") != n:
        return None
    return list(iter_shard(path))


def iter_shard(path: str | Path) -> Iterator[dict[str, np.ndarray]]:
    """The utterances of one shard, as dicts of ``log_mel``/``f0_hz``/``voiced_fraction``/``energy_db``/``targets``."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in _SHARD_KEYS}
    mo, fo = arrays["mel_offsets"], arrays["frame_offsets"]
    for i in range(len(fo) - 1):
        yield {"log_mel": arrays["log_mel"][mo[i]:mo[i + 1]],
               **{k: arrays[k][fo[i]:fo[i + 1]] for k in ("f0_hz", "voiced_fraction", "energy_db", "targets")}}


def read_index(corpus_dir: str | Path) -> dict:
    """The corpus index; one-line error if ``corpus_dir`` is not a finished corpus."""
    path = Path(corpus_dir) / "index.json"
    if not path.is_file():
        raise Avatar3DError(f"{corpus_dir}: no index.json; build a corpus there first (avatar3d.motion.corpus)")
    index = json.loads(path.read_text())
    if index.get("version") != CORPUS_VERSION:
        raise Avatar3DError(f"{path}: corpus version {index.get('version')} is not {CORPUS_VERSION}; rebuild it")
    return index


def load_split(corpus_dir: str | Path, split: str) -> list[dict[str, np.ndarray]]:
    """All utterances of ``split`` ("train" or "test") in index order, each with its ``voice`` added."""
    if split not in SPLITS:
        raise Avatar3DError(f"split {split!r} is not one of {SPLITS}")
    index = read_index(corpus_dir)
    voices = {(u["shard"], u["position"]): u["voice"] for u in index["utterances"]}
    out = []
    for shard in index["shards"]:
        if shard["split"] != split:
            continue
        for pos, item in enumerate(iter_shard(Path(corpus_dir) / shard["file"])):
            item["voice"] = voices[(shard["file"], pos)]
            out.append(item)
    return out


def corpus_config(index: dict) -> CorpusConfig:
    """The CorpusConfig a corpus was built with, from its index (JSON lists back to tuples)."""
    return CorpusConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in index["config"].items()})


def corpus_fps(corpus_dir: str | Path) -> float:
    """Frame rate the corpus curves were made at."""
    return float(read_index(corpus_dir)["config"]["fps"])


# --- speech-encoder streams (optional front-end) ---------------------------------------------------

ENCODER_CACHE = "encoder_cache"
"""Folder (inside a corpus) of cached speech-encoder streams, one subfolder per encoder cache key."""


def encoder_cache_dir(corpus_dir: str | Path, encoder: Any) -> Path:
    """Where the streams of ``encoder`` (a SpeechEncoder) are cached for this corpus."""
    return Path(corpus_dir) / ENCODER_CACHE / encoder.cache_key()


def stream_to_store(stream: np.ndarray) -> np.ndarray:
    """float16 like the stored log-mel, unless a value would overflow it."""
    return stream.astype(np.float16) if float(np.abs(stream).max(initial=0.0)) < 6.0e4 else stream.astype(np.float32)


def cached_streams(path: Path, meta: dict, compute: Callable[[], list[np.ndarray]]) -> list[np.ndarray]:
    """Per-utterance streams from the npz at ``path`` if its sidecar meta equals ``meta``, else computed and
    written atomically (npz first, then its meta: a half-written cache is never read)."""
    meta_path = path.with_name(path.name + ".json")
    try:
        if path.is_file() and meta_path.is_file() and json.loads(meta_path.read_text()) == meta:
            with np.load(path) as z:
                stream, offsets = z["stream"], z["offsets"]
            return [stream[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    except (OSError, ValueError, KeyError):
        pass  # unreadable cache: recompute
    streams = [stream_to_store(s) for s in compute()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        offsets = np.cumsum([0] + [len(s) for s in streams]).astype(np.int64)
        save_npz_atomic(path, stream=np.concatenate(streams), offsets=offsets)
        write_json_atomic(meta_path, meta)
    except OSError as exc:
        raise Avatar3DError(f"cannot write the speech-encoder cache {path} ({exc}): make {path.parent} writable")
    return streams


def encoder_streams(corpus_dir: str | Path, split: str, encoder: Any, *, progress: bool = True
                    ) -> list[np.ndarray]:
    """The speech-encoder stream [4 n_frames, dim] of every ``split`` utterance, in :func:`load_split` order.

    The corpus keeps features, not audio: each utterance is re-spoken from its
    plan (espeak-ng, no alignment) and checked against the stored log-mel, so a
    different espeak-ng gives a one-line error instead of silently mismatched
    inputs.  Streams are cached per shard under ``encoder_cache/<key>/``.
    """
    if split not in SPLITS:
        raise Avatar3DError(f"split {split!r} is not one of {SPLITS}")
    index = read_index(corpus_dir)
    config = corpus_config(index)
    spec_fields = {f.name for f in dataclasses.fields(UtteranceSpec)}
    out: list[np.ndarray] = []
    shards = [sh for sh in index["shards"] if sh["split"] == split]
    bar = tqdm(total=sum(sh["n"] for sh in shards), disable=not progress, desc="speech encoder", unit="utt")
    try:
        for shard in shards:
            entries = sorted((u for u in index["utterances"] if u["shard"] == shard["file"]),
                             key=lambda u: u["position"])
            stored = list(iter_shard(Path(corpus_dir) / shard["file"]))

            def compute(entries: list[dict] = entries, stored: list[dict] = stored) -> list[np.ndarray]:
                streams = []
                for u, item in zip(entries, stored):
                    spec = UtteranceSpec(**{k: tuple(v) if k == "sentences" else v
                                            for k, v in u.items() if k in spec_fields})
                    audio, _, n_frames = utterance_audio(spec, config)
                    mel = log_mel(audio, AudioFeatureConfig(sample_rate=config.sample_rate))
                    stored_mel = item["log_mel"].astype(np.float32)
                    if n_frames != len(item["targets"]) or mel.shape != stored_mel.shape or float(np.abs(
                            mel.astype(np.float16).astype(np.float32) - stored_mel).max()) > 0.05:
                        raise Avatar3DError(f"{corpus_dir}: utterance {u['split']} {u['index']} ({u['voice']}) does "
                                            "not re-speak identically (another espeak-ng than the one that built the "
                                            "corpus?): rebuild the corpus on this machine")
                    streams.append(encoder.encode(audio, config.sample_rate))
                    bar.update(1)
                return streams

            meta = {"fingerprint": encoder.fingerprint, "key": encoder.cache_key(), "shard": shard["file"],
                    "n": len(entries), "rows": [int(len(it["log_mel"])) for it in stored]}
            before = bar.n
            streams = cached_streams(encoder_cache_dir(corpus_dir, encoder) / shard["file"], meta, compute)
            if bar.n == before:
                bar.update(len(entries))
            out += streams
    finally:
        bar.close()
    return out


__all__ = ["CorpusConfig", "UtteranceSpec", "ACCENTS", "EXCLUDED_VARIANTS", "generate_sentences", "plan",
           "voice_sets", "make_utterance", "make_shard", "build_corpus", "iter_shard", "read_index", "load_split", "corpus_fps",
           "utterance_audio", "encoder_streams", "encoder_cache_dir", "cached_streams", "ENCODER_CACHE"]
