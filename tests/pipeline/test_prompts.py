"""ovi.pipeline.prompts: caption styles per model, tag stripping, file stems, upstream prompt files."""

import pytest

from ovi.config import load_config
from ovi.errors import ConfigError, InputError
from ovi.pipeline.prompts import (
    clean_text,
    clip_stem,
    expand_prompts,
    format_prompt,
    read_prompt_file,
)

ROW = "<S>Hello there<E> a man speaks. <AUDCAP>Clear male voice, room tone<ENDAUDCAP>"
ROW_COLON = "<S>Hello there<E> a man speaks. Audio: Clear male voice, room tone"


def test_format_prompt_converts_to_the_models_caption_style():
    assert format_prompt(ROW, "960x960_5s") == ROW_COLON
    assert format_prompt(ROW, "960x960_10s") == ROW_COLON
    assert format_prompt(ROW_COLON, "720x720_5s") == ROW
    assert format_prompt(ROW, "720x720_5s") == ROW  # already right: unchanged
    assert format_prompt(ROW_COLON, "960x960_5s") == ROW_COLON
    assert format_prompt(ROW_COLON, "tiny") == ROW  # tiny follows the 720 style
    assert format_prompt("no caption at all", "720x720_5s") == "no caption at all"


def test_format_prompt_keeps_speech_verbatim():
    prompt = "<S>Audio: is it on?<E> a DJ taps the mic. Audio: feedback squeal"
    assert format_prompt(prompt, "720x720_5s") == (
        "<S>Audio: is it on?<E> a DJ taps the mic. <AUDCAP>feedback squeal<ENDAUDCAP>")
    multi = "<S>One.<E> then <S>Two, three!<E> <AUDCAP>two voices\nand rain<ENDAUDCAP>"
    assert format_prompt(multi, "960x960_5s") == "<S>One.<E> then <S>Two, three!<E> Audio: two voices\nand rain"


def test_format_prompt_unknown_model():
    with pytest.raises(ConfigError, match="model_name '1080p'.*720x720_5s"):
        format_prompt(ROW, "1080p")


def test_clean_text_strips_tags_and_captions():
    assert clean_text(ROW) == "Hello there a man speaks."
    assert clean_text(ROW_COLON) == "Hello there a man speaks."
    assert clean_text("<S>Audio: test<E> mic check. Audio: hum") == "Audio: test mic check."
    assert clean_text("A cat <AUDCAP>purring<ENDAUDCAP> sleeps.\n  Softly.") == "A cat sleeps. Softly."
    assert clean_text("stray <S>tag and <E> more") == "stray tag and more"


def test_clip_stem_like_upstream_filename():
    assert clip_stem(ROW, 704, 1280, 103) == "Hello_there_a_man_speaks_704x1280_103_0"
    long = "A very long prompt that goes on and on about a sunset over the sea and more"
    stem = clip_stem(long, 128, 128, 7, index=2)
    assert stem == "A_very_long_prompt_that_goes_on_and_on_about_a_sun_128x128_7_2"
    assert clip_stem('../etc/pa:ss "x"?*|<>', 32, 32, 1) == "etc_pa_ss_x_32x32_1_0"
    assert clip_stem("<AUDCAP>only sound<ENDAUDCAP>", 32, 64, 5) == "clip_32x64_5_0"
    assert clip_stem("Café à la plage", 32, 32, 0) == "Café_à_la_plage_32x32_0_0"


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_read_upstream_csv(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"png")
    csv_path = write(tmp_path / "prompts.csv",
                     "text_prompt,image_path\n"
                     f'"{ROW.replace(chr(34), chr(34) * 2)}",imgs/a.png\n'
                     '"Rain on a roof, at night. Audio: steady rain",\n'
                     ',\n')
    assert read_prompt_file(csv_path, "i2v") == [
        (ROW, str(tmp_path / "imgs" / "a.png")),  # relative to the csv's folder
        ("Rain on a roof, at night. Audio: steady rain", None),
        ("", None),
    ]
    assert [img for _, img in read_prompt_file(csv_path, "t2v")] == [None, None, None]


def test_read_tsv_with_bom_and_only_text_column(tmp_path):
    tsv = write(tmp_path / "p.tsv", "\ufefftext_prompt\textra\nfirst prompt\tx\nsecond, with comma\ty\n")
    assert read_prompt_file(tsv, "i2v") == [("first prompt", None), ("second, with comma", None)]


def test_prompt_file_errors_name_file_row_and_fix(tmp_path):
    no_col = write(tmp_path / "bad.csv", "prompt,image_path\nhello,\n")
    with pytest.raises(InputError,
                       match=r"bad.csv': missing required column 'text_prompt' \(found: prompt, image_path\)"):
        read_prompt_file(no_col, "t2v")
    missing_img = write(tmp_path / "i2v.csv", "text_prompt,image_path\nok,\nhello,missing/face.png\n")
    with pytest.raises(InputError, match=r"i2v.csv', row 2: image_path 'missing/face.png' does not exist"):
        read_prompt_file(missing_img, "i2v")
    read_prompt_file(missing_img, "t2v")  # image paths are ignored outside i2v, as upstream
    with pytest.raises(InputError, match="must end in .csv or .tsv"):
        read_prompt_file(write(tmp_path / "p.txt", "text_prompt\nx\n"), "t2v")
    with pytest.raises(InputError, match="nope.csv' not found"):
        read_prompt_file(tmp_path / "nope.csv", "t2v")


def test_expand_literal_prompt_repeats_in_a_row():
    cfg = load_config(None, text_prompt=ROW, each_example_n_times=3)
    assert expand_prompts(cfg) == [(ROW, None)] * 3


def test_expand_prompt_file(tmp_path):
    csv_path = write(tmp_path / "p.csv", "text_prompt\nfirst\nsecond\n")
    cfg = load_config(None, text_prompt=str(csv_path), each_example_n_times=2)
    assert expand_prompts(cfg) == [("first", None), ("first", None), ("second", None), ("second", None)]


def test_expand_i2v_uses_image_path_as_default(tmp_path):
    face = tmp_path / "face.png"
    face.write_bytes(b"png")
    (tmp_path / "other.png").write_bytes(b"png")
    csv_path = write(tmp_path / "p.csv", "text_prompt,image_path\na,other.png\nb,\n")
    cfg = load_config(None, mode="i2v", text_prompt=str(csv_path), image_path=str(face))
    assert expand_prompts(cfg) == [("a", str(tmp_path / "other.png")), ("b", str(face))]
    assert expand_prompts(cfg.replace(text_prompt="literal")) == [("literal", str(face))]
    assert expand_prompts(cfg.replace(mode="t2v", text_prompt="literal")) == [("literal", None)]
    with pytest.raises(InputError, match="image_path '.*gone.png' does not exist"):
        expand_prompts(cfg.replace(image_path=str(tmp_path / "gone.png")))


def test_expand_errors(tmp_path):
    with pytest.raises(InputError, match="text_prompt is empty; pass --prompt TEXT"):
        expand_prompts(load_config(None, text_prompt="  "))
    with pytest.raises(InputError, match="text_prompt '.*typo.csv' looks like a prompt file but does not exist"):
        expand_prompts(load_config(None, text_prompt=str(tmp_path / "typo.csv")))
