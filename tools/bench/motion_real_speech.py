"""Benchmark: does a motion model close the lips on real speech's bilabials and hold still in pauses?

Runs a motion model (default: the shipped one) on the real recordings of
Debian's ``pocketsphinx-testdata`` (or the audio files given), aligns each
with pocketsphinx (forced alignment when a transcript is known, phone loop
otherwise) and applies :mod:`avatar3d.eval.lip_closure`: bilabial closure
(lip gap < 2 mm on some frame of each P/B/M), open-vowel opening (the
counter-check, vowels >= 100 ms), silences >= 300 ms closed and still.  Bilabials and open
vowels are counted on force-aligned recordings only; silences on all.
Also phone-class frame agreement between phone-loop decoding and forced
alignment on the transcribed recordings (how good the transcript-free
phonetic features are on real speech).  ``--synthetic N`` adds N held-out
synthetic voices (espeak-ng ``en-029`` with variants f4 / m3, which the
default model never saw) for comparison.  Prints a table, then one JSON line.

Rows (before/after of issue 6's phone constraints, :mod:`avatar3d.motion.phone_constraints`):
``model`` is the raw model (the original figures); ``gated`` adds the speech gate that
``avatar3d render`` applies; ``gated+loop`` adds the phone constraints timed by
pocketsphinx *phone-loop* decoding of the audio alone (``render --audio --phones
loop``, the default before); ``gated+words`` times them by the words pocketsphinx
*recognises* (en-US LM, no transcript) force-aligned, falling back to the loop when
the words look wrong (:mod:`avatar3d.audio.word_phones`) -- what ``render --audio``
does by default.  The truth they are judged against is the *forced alignment* with the
transcript, a different decoding with the words known, so the loop row is not
judged by its own timeline (both use pocketsphinx's acoustic model, so their
errors are not fully independent either).  On the synthetic voices
``text/espeak`` is what ``render --text`` does: the same audio (bit-identical)
with the constraints timed by espeak-ng's own phoneme events, judged against the
forced alignment too; ``text(own)`` judges the same curves against espeak-ng's
own timeline (bilabials closed by construction there; shown for the pauses).

    python tools/bench/motion_real_speech.py [--model PATH] [--fps 25] [--synthetic 6] [FILE ...]
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from avatar3d.audio.phonetic import phone_frames
from avatar3d.audio.word_phones import WordPhones, word_phones
from avatar3d.eval.lip_closure import (LipClosureConfig, LipGeometry, Recording, evaluate_lip_closure,
                                       read_recording, pocketsphinx_recordings)
from avatar3d.audio.features import resample_mono
from avatar3d.audio.phones import Phone
from avatar3d.motion.model import load, load_default
from avatar3d.render.speech import SAMPLE_RATE, gated_mouth_curves

SYNTH_SENTENCES = (
    "Peter bought a map and a big umbrella before the storm.",
    "My brother plays the piano, but he prefers bebop.",
    "Maybe the bus will stop by the pub at midnight.",
    "Bob made a simple plan to bump into them by the lamp.",
    "The baby put the purple ball back in the box.",
    "Mom baked amazing bread for a picnic in May.",
)
SYNTH_VOICES = ("en-029+f4", "en-029+m3", "en-029")
SHIFTS = (-0.04, 0.04)
"""The word timeline is also tried moved 40 ms early / late: on utterances the recogniser heard right, the
constraints' timeline and the judging one come from the same aligner, so these rows show how much of the
closure rate depends on that shared timing (the aligner is ~20-30 ms from hand labels)."""


def _pool(results: list) -> dict:
    """Rates pooled over recordings (phone-weighted, not the mean of per-file rates)."""
    bil = [d for r in results for d in r.bilabials]
    vow = [d for r in results for d in r.open_vowels]
    sil = [d for r in results for d in r.silences]
    rate = (lambda xs, f: round(float(np.mean([f(d) for d in xs])), 4) if xs else None)
    return {"bilabials": len(bil), "bilabial_closure": rate(bil, lambda d: d["closed"]),
            "open_vowels": len(vow), "open_vowel_opening": rate(vow, lambda d: d["open"]),
            "silences": len(sil), "silence_closed": rate(sil, lambda d: d["closed"]),
            "silence_still": rate(sil, lambda d: d["still"]),
            "silence_closed_still": rate(sil, lambda d: d["closed"] and d["still"])}


def _closure_match(truth, decoded, slack: float = 0.04) -> list[int]:
    """[decoded P/B/M within ``slack`` s of a true one, decoded P/B/M, true P/B/M]: how many closures a
    timeline imposes and how many of them the transcript's alignment has too (the rest seal the lips wrongly)."""
    bil = ("P", "B", "M")
    dec = [p for p in decoded if p.label in bil]
    true = [p for p in truth if p.label in bil]
    hit = sum(any(t.start < d.end + slack and t.end > d.start - slack for t in true) for d in dec)
    return [hit, len(dec), len(true)]


def _heard(name: str, transcript: str | None, words: WordPhones) -> dict:
    """What the recogniser heard in one recording, against the transcript when there is one."""
    ref = transcript.lower().split() if transcript else []
    return {"recording": name, "mode": words.mode, "reason": words.reason, "heard": words.text,
            "transcript": transcript, "ref_words": len(ref),
            "word_errors": _edit_distance(ref, words.text.split()) if transcript else None}


def _edit_distance(a: list[str], b: list[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def _wer(heard: list[dict]) -> float | None:
    scored = [h for h in heard if h["transcript"]]
    n = sum(h["ref_words"] for h in scored)
    return round(sum(h["word_errors"] for h in scored) / n, 4) if n else None


def _fmt(x) -> str:
    return "   -" if x is None else f"{100 * x:4.0f}"


def run_one(model, geometry, audio, sr, transcript, fps, cfg, tts_phones=None, clock=None):
    """The truth track, the lip-closure results of each row (see the module docstring), the phone-loop /
    transcript agreement and the word decoding (``clock`` accumulates decode seconds per decoder)."""
    n = max(1, int(math.ceil(len(audio) / sr * fps)))
    track = phone_frames(audio, sr, fps, n, transcript=transcript)
    curves = model.predict(audio, fps, n, sr)
    res = {"model": evaluate_lip_closure(curves, track.phones, fps, cfg, geometry)}
    clock = clock if clock is not None else {}
    t0 = time.perf_counter()
    loop = phone_frames(audio, sr, fps, n)
    t1 = time.perf_counter()
    words = word_phones(audio, sr)
    clock["loop"] = clock.get("loop", 0.0) + t1 - t0
    clock["words"] = clock.get("words", 0.0) + time.perf_counter() - t1
    clock["audio"] = clock.get("audio", 0.0) + len(audio) / sr
    agree = float((loop.index == track.index).mean()) if track.mode == "align" else None
    x16 = audio if sr == SAMPLE_RATE else resample_mono(audio, sr, SAMPLE_RATE)
    res["gated"] = evaluate_lip_closure(gated_mouth_curves(model, x16, fps, n), track.phones, fps, cfg, geometry)
    res["gated+loop"] = evaluate_lip_closure(gated_mouth_curves(model, x16, fps, n, loop.phones), track.phones,
                                             fps, cfg, geometry)
    res["gated+words"] = evaluate_lip_closure(gated_mouth_curves(model, x16, fps, n, words.phones), track.phones,
                                              fps, cfg, geometry)
    for shift in SHIFTS:  # where the words were heard right, their timeline *is* the judge's (same aligner)
        moved = [Phone(max(p.start + shift, 0.0), max(p.end + shift, 0.0), p.label) for p in words.phones]
        res[f"words{1000 * shift:+.0f}ms"] = evaluate_lip_closure(gated_mouth_curves(model, x16, fps, n, moved),
                                                                  track.phones, fps, cfg, geometry)
    if tts_phones is not None:
        text_curves = gated_mouth_curves(model, x16, fps, n, tts_phones)
        res["text/espeak"] = evaluate_lip_closure(text_curves, track.phones, fps, cfg, geometry)
        # judged by espeak-ng's own timeline: circular for the bilabials (closed by construction), but its
        # pauses are the audio's real pauses (tests/motion/test_tts_phonemes.py), unlike the aligner's
        res["text(own)"] = evaluate_lip_closure(text_curves, tts_phones, fps, cfg, geometry)
    if track.mode == "align":  # decoded closures against the transcript's: [true ones found, decoded, true]
        res["closures"] = {name: _closure_match(track.phones, phones)
                           for name, phones in (("loop", loop.phones), ("words", words.phones))}
    return track, res, agree, words


def _summary(label: str, p: dict) -> str:
    line = (f"  {label:<12} bilabial closure {_fmt(p['bilabial_closure'])} % of {p['bilabials']}, open-vowel opening "
            f"{_fmt(p['open_vowel_opening'])} % of {p['open_vowels']}, silences closed {_fmt(p['silence_closed'])} %, "
            f"still {_fmt(p['silence_still'])} %, both {_fmt(p['silence_closed_still'])} % of {p['silences']}")
    if "aligned_silences" in p:
        line += (f" (force-aligned recordings only: {_fmt(p['aligned_silence_closed_still'])} % of "
                 f"{p['aligned_silences']})")
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*", help="audio files (wav/flac/..., phone loop) instead of the testdata set")
    ap.add_argument("--model", default=None, help="motion model file (default: the shipped model)")
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--closed-mm", type=float, default=LipClosureConfig.closed_mm)
    ap.add_argument("--still-mm", type=float, default=LipClosureConfig.still_mm)
    ap.add_argument("--synthetic", type=int, default=0, help="also N held-out synthetic utterances (espeak-ng)")
    args = ap.parse_args()
    cfg = LipClosureConfig(closed_mm=args.closed_mm, still_mm=args.still_mm)
    model = load(args.model) if args.model else load_default()
    geometry = LipGeometry()
    recs = [Recording(Path(f).name, Path(f), None, "none (phone loop)") for f in args.files] \
        if args.files else pocketsphinx_recordings()

    t0 = time.perf_counter()
    print(f"{'recording':<48}{'sec':>6}{'mode':>6}{'bilab':>7}{'closed%':>8}{'vowels':>7}{'open%':>6}"
          f"{'sil':>4}{'closed%':>8}{'still%':>7}{'loop=align%':>12}{'+loop closed%':>14}{'open%':>6}{'still%':>7}"
          f"{'+words closed%':>15}{'open%':>6}{'still%':>7}")
    rows = ("model", "gated", "gated+loop", "gated+words", *(f"words{1000 * s:+.0f}ms" for s in SHIFTS))
    real, aligned, agrees, frames = {r: [] for r in rows}, {r: [] for r in rows}, [], 0
    clock: dict[str, float] = {}
    closures: dict[str, list[int]] = {}
    heard: list[dict] = []
    for rec in recs:
        audio, sr = read_recording(rec)
        track, results, agree, words = run_one(model, geometry, audio, sr, rec.transcript, args.fps, cfg,
                                               clock=clock)
        heard.append(_heard(rec.name, rec.transcript, words))
        for k, v in results.get("closures", {}).items():
            closures[k] = [a + b for a, b in zip(closures.get(k, [0, 0, 0]), v)]
        for r in rows:
            real[r].append(results[r])
        frames += track.n_frames
        if track.mode == "align":
            for r in rows:
                aligned[r].append(results[r])
            agrees.append((agree, track.n_frames))
        res, con, wrd = results["model"], results["gated+loop"], results["gated+words"]
        print(f"{rec.name[-48:]:<48}{len(audio) / sr:6.1f}{track.mode:>6}{len(res.bilabials):7d}"
              f"{_fmt(res.bilabial_closure):>8}{len(res.open_vowels):7d}{_fmt(res.open_vowel_opening):>6}"
              f"{len(res.silences):4d}{_fmt(res.silence_closed):>8}{_fmt(res.silence_still):>7}"
              f"{_fmt(agree):>12}{_fmt(con.bilabial_closure):>14}{_fmt(con.open_vowel_opening):>6}"
              f"{_fmt(con.silence_closed_still):>7}{_fmt(wrd.bilabial_closure):>15}{_fmt(wrd.open_vowel_opening):>6}"
              f"{_fmt(wrd.silence_closed_still):>7}")
    for h in heard:
        print(f"  {h['recording'][-40:]:<40} {h['mode']:<5} heard: {h['heard']!r}"
              + (f" (transcript: {h['transcript']!r}, word errors {h['word_errors']})" if h["transcript"] else "")
              + (f" [{h['reason']}]" if h["reason"] else ""))
    pooled_rows = {}
    for r in rows:
        pooled_rows[r] = _pool(aligned[r])
        # silences of force-aligned recordings only: for the gated+loop row the others' truth is the loop itself
        pooled_rows[r]["aligned_silences"] = pooled_rows[r]["silences"]
        pooled_rows[r]["aligned_silence_closed_still"] = pooled_rows[r]["silence_closed_still"]
        sil = _pool(real[r])
        pooled_rows[r].update({k: sil[k] for k in ("silences", "silence_closed", "silence_still",
                                                   "silence_closed_still")})
    pooled = pooled_rows["model"]
    agreement = (sum(a * n for a, n in agrees) / sum(n for _, n in agrees)) if agrees else None
    print(f"\nreal speech ({len(recs)} recordings, {len(aligned['model'])} force-aligned): bilabial closure "
          f"{_fmt(pooled['bilabial_closure'])} % of {pooled['bilabials']}, open-vowel opening "
          f"{_fmt(pooled['open_vowel_opening'])} % of {pooled['open_vowels']}, silences >= "
          f"{cfg.min_silence_s * 1000:.0f} ms closed {_fmt(pooled['silence_closed'])} %, still "
          f"{_fmt(pooled['silence_still'])} %, both {_fmt(pooled['silence_closed_still'])} % of {pooled['silences']}")
    for r in rows:
        print(_summary(r, pooled_rows[r]))
    for k, (hit, n_dec, n_true) in closures.items():
        print(f"  {k:<6} timeline imposes {n_dec} closures on the force-aligned recordings, {hit} of them within 40 ms "
              f"of one of the transcript's {n_true} bilabials")
    print(f"thresholds: closed = lip gap < {cfg.closed_mm} mm on some frame of the phone; still = no lip landmark "
          f"moves > {cfg.still_mm} mm per frame, {cfg.edge_margin_s * 1000:.0f} ms silence edges not judged")
    out = {"bench": "motion_real_speech", "model": args.model or "default", "fps": args.fps,
           "recordings": len(recs), "aligned_recordings": len(aligned["model"]), "frames": frames,
           "real": pooled, "real_gated": pooled_rows["gated"], "real_gated_loop": pooled_rows["gated+loop"],
           "real_gated_words": pooled_rows["gated+words"],
           "real_words_shifted": {r: pooled_rows[r]["bilabial_closure"] for r in rows if r.startswith("words")},
           "word_mode_recordings": sum(h["mode"] == "words" for h in heard),
           "word_error_rate": _wer(heard),
           "decoded_bilabials_true_decoded_truth": closures,
           "phone_class_loop_vs_align": None if agreement is None else round(agreement, 4),
           "thresholds": asdict(cfg)}

    if args.synthetic > 0:
        from avatar3d.audio.phones import SIL
        from avatar3d.audio.tts_phonemes import synthesize_with_phonemes

        srows = (*rows, "text/espeak", "text(own)")
        synth = {r: [] for r in srows}
        truth_loop = 0  # utterances whose forced alignment failed: their truth is the phone loop (circular for +loop)
        pad = 0.5
        for i in range(args.synthetic):
            text = SYNTH_SENTENCES[i % len(SYNTH_SENTENCES)]
            voice = SYNTH_VOICES[i % len(SYNTH_VOICES)]
            tts = synthesize_with_phonemes(text, voice=voice)  # the same samples as synth.speech.synthesize
            zeros = np.zeros(int(pad * 16000), np.float32)
            audio = np.concatenate([zeros, tts.audio, zeros])
            phones = [Phone(0.0, pad, SIL)] + [Phone(p.start + pad, p.end + pad, p.label) for p in tts.as_phones()]
            phones.append(Phone(phones[-1].end, len(audio) / 16000, SIL))
            truth, results, _, words = run_one(model, geometry, audio, 16000, text, args.fps, cfg, tts_phones=phones,
                                               clock=clock)
            truth_loop += truth.mode != "align"
            print(f"  {voice:<10} {words.mode:<5} heard: {words.text!r}"
                  + (f" [{words.reason}]" if words.reason else "")
                  + ("" if truth.mode == "align" else " (forced alignment failed: judged against the phone loop)"))
            for r in srows:
                synth[r].append(results[r])
        sp_rows = {r: _pool(synth[r]) for r in srows}
        sp = sp_rows["model"]
        print(f"held-out synthetic voices ({args.synthetic} utterances, {', '.join(SYNTH_VOICES)}): bilabial closure "
              f"{_fmt(sp['bilabial_closure'])} % of {sp['bilabials']}, open-vowel opening "
              f"{_fmt(sp['open_vowel_opening'])} %, silences closed+still {_fmt(sp['silence_closed_still'])} % "
              f"of {sp['silences']}")
        for r in srows:
            print(_summary(r, sp_rows[r]))
        out["synthetic_held_out"] = sp
        out["synthetic_gated"] = sp_rows["gated"]
        out["synthetic_gated_loop"] = sp_rows["gated+loop"]
        out["synthetic_text_espeak"] = sp_rows["text/espeak"]
        out["synthetic_gated_words"] = sp_rows["gated+words"]
        out["synthetic_truth_from_loop"] = truth_loop
    out["decode_s_per_audio_s"] = {k: round(clock[k] / clock["audio"], 3) for k in ("loop", "words")} \
        if clock.get("audio") else None
    print(f"decode time per second of audio (this machine, this run): phone loop "
          f"{clock['loop'] / clock['audio']:.3f} s, words (recognition + alignment, or the loop when they fall back) "
          f"{clock['words'] / clock['audio']:.3f} s")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
