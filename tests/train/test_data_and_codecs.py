"""The trained tiny model's world: synthetic clips, the shapes codecs, the word tokenizer, and the analytic
measurements the quality bench relies on (checked against the data they measure)."""

import random

import numpy as np
import pytest
import torch

from ovi.codecs.shapes import COLOR_MEAN, COLOR_STD, ShapesAudioCodec, ShapesVideoCodec, coordinate_maps
from ovi.codecs.text import T5_CONFIGS, WordTokenizer
from ovi.errors import CheckpointError
from ovi.pipeline.images import to_uint8_frames
from ovi.train import data, metrics


def _clips(n, seed=0):
    rng = random.Random(seed)
    combos = data.all_combinations()
    rng.shuffle(combos)
    return [data.sample_spec(c, rng) for c in combos[:n]]


def test_held_out_combinations_are_never_trained_but_every_word_is():
    train = set(data.training_combinations())
    assert not train & set(data.HELD_OUT)
    for i, values in enumerate((data.COLORS, data.SHAPES, data.MOTIONS, data.PITCHES)):
        assert {c[i] for c in train} == set(values)
    assert {c[2] for c in data.HELD_OUT} == set(data.MOTIONS)  # the bench sees every motion


def test_codec_round_trip_keeps_what_the_bench_measures():
    vc, ac = ShapesVideoCodec(), ShapesAudioCodec()
    for spec in _clips(20):
        v = torch.from_numpy(data.render_video(spec))
        a = torch.from_numpy(data.render_audio(spec, ac.CYCLES))
        latent = vc.encode(v)
        assert latent.shape == vc.latent_shape(17, 128, 128) == (48, 5, 16, 16)
        m = metrics.measure(to_uint8_frames(vc.decode(latent)), ac.decode(ac.encode(a)).numpy())
        assert (m.color, m.motion, m.pitch) == (spec.color, spec.motion, spec.pitch), spec
        if spec.motion == "bounce":
            assert m.contacts == data.contact_frames(spec)
            assert metrics.sync_error(m, 17) <= 0.5  # clicks sit on the codec's 32 ms grid


def test_fixed_latents_are_coordinates_and_decode_ignores_them():
    vc = ShapesVideoCodec()
    mask, values = vc.fixed_latents((48, 5, 16, 16))
    assert mask.shape == values.shape == (48, 5, 16, 16)
    assert not mask[:12].any() and mask[12:].all()
    assert torch.equal(values[12:24], coordinate_maps(5, 16, 16))
    x = values[12]  # normalised x grows left to right, y top to bottom, t along frames
    assert x[0, 0, 0] < x[0, 0, -1] and values[13][0, 0, 0] < values[13][0, -1, 0] and values[14][0, 0, 0] < values[14][-1, 0, 0]
    latent = vc.encode(torch.from_numpy(data.render_video(_clips(1)[0])))
    assert torch.equal(latent[mask], values[mask])
    scrambled = latent.clone()
    scrambled[12:] = torch.randn(36, 5, 16, 16)
    assert torch.equal(vc.decode(scrambled), vc.decode(latent))


def test_color_normalisation_matches_the_data():
    mean, std = data.measure_color_stats(n=300, seed=1)
    assert np.allclose(mean, COLOR_MEAN, atol=0.01) and np.allclose(std, COLOR_STD, rtol=0.05)


def test_word_tokenizer_reads_prompts_and_names_unknown_words():
    vocab = data.vocabulary()
    assert len(vocab) == T5_CONFIGS["tiny_trained"]["vocab_size"]
    tok = WordTokenizer(vocab, 32)
    prompt = "A blue Square moves left. <AUDCAP>a low tone<ENDAUDCAP>"
    assert tok.tokens(prompt) == ["a", "blue", "square", "moves", "left", ".", "<AUDCAP>", "a", "low", "tone",
                                  "<ENDAUDCAP>"]
    ids, mask = tok([prompt, "A purple square"])
    assert int(mask[0].sum()) == 12 and ids[0, 11] == tok.eos_id
    assert ids[1, 1] == tok.unk_id and tok.unknown_words("A purple square") == ["purple"]
    left, right = tok(["moves left", "moves right"])[0]
    assert not torch.equal(left, right)
    with pytest.raises(CheckpointError, match="must start with"):
        WordTokenizer(["a", "b", "c"], 8)


def test_metrics_classify_motions_and_reject_static_clips():
    for spec in _clips(40, seed=3):
        m = metrics.measure(to_uint8_frames(torch.from_numpy(data.render_video(spec))),
                            data.render_audio(spec, ShapesAudioCodec.CYCLES))
        assert m.motion == spec.motion and m.color == spec.color and m.pitch == spec.pitch
    still = np.full((17, 128, 128, 3), 128, np.uint8)
    still[:, 40:70, 40:70] = (255, 0, 0)
    m = metrics.measure(still, np.zeros(11264, np.float32))
    assert (m.color, m.motion, m.pitch, m.clicks) == ("red", "static", None, [])
    blank = metrics.measure(np.full((17, 128, 128, 3), 128, np.uint8), np.zeros(11264, np.float32))
    assert (blank.color, blank.motion) == (None, None)


def test_prompts_parse_back_to_their_labels():
    for spec in _clips(30, seed=4):
        assert data.parse_prompt(spec.prompt) == {"color": spec.color, "motion": spec.motion, "pitch": spec.pitch}
