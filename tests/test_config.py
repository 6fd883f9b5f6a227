"""ovi.config: loading, validation messages, shipped yaml files, gating of pending features."""

import json
from pathlib import Path

import pytest
import yaml

import ovi.config as config_module
from ovi.config import (
    CONFIG_DIR,
    bundled_ckpt_dir,
    FIELDS,
    OviConfig,
    load_config,
    parse_set_option,
    shipped_configs,
)
from ovi.errors import ConfigError, InputError, NotAvailableError

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# upstream Ovi's ovi/configs/inference/inference_fusion.yaml, key for key (plus the keys its code reads)
UPSTREAM_KEYS = {
    "ckpt_dir": "./ckpts", "output_dir": "./outputs", "model_name": "960x960_10s", "mode": "i2v",
    "sample_steps": 50, "solver_name": "unipc", "shift": 5.0, "sp_size": 1, "audio_guidance_scale": 3.0,
    "video_guidance_scale": 4.0, "slg_layer": 11, "seed": 103, "fp8": False, "cpu_offload": False,
    "each_example_n_times": 2, "video_frame_height_width": [704, 1280],
    "text_prompt": "example_prompts/gpt_examples_10s_i2v.csv",
    "video_negative_prompt": "jitter, bad hands, blur, distortion",
    "audio_negative_prompt": "robotic, muffled, echo, distorted",
    "image_path": None, "qint8": False, "shard_text_model": False,
}
SEED_KEYS = {"use_fsdp": True, "fsdp_sharding_strategy": "SHARD_GRAD_OP", "fsdp_cpu_offload": False,
             "use_optimized_comms": True, "enable_async_comms": True, "use_tensor_cores": True}


def test_no_argument_gives_the_embedded_tiny_default():
    cfg = load_config()
    assert cfg == load_config(REPO_CONFIGS / "tiny.yaml")
    assert (cfg.model_name, cfg.model, cfg.ckpt_dir, cfg.output_dir) == (
        "tiny_trained", "tiny_trained", str(bundled_ckpt_dir("tiny_trained")), "./outputs")
    assert Path(cfg.ckpt_dir) == CONFIG_DIR.parent / "weights" / "tiny_trained"  # inside the package
    assert (cfg.sample_steps, cfg.mode, cfg.video_frame_height_width, cfg.seed, cfg.dtype) == (
        8, "t2v", [128, 128], 103, "fp32")
    assert (cfg.slg_layer, cfg.sp_size, cfg.solver_name) == (-1, None, "unipc")  # sp fills from the ranks
    assert cfg.text_prompt  # the default run has something to generate
    cfg.require_available()


def test_shipped_yaml_files_are_package_data_and_identical_to_repo_configs():
    packaged = {p.name: p.read_bytes() for p in CONFIG_DIR.glob("*.yaml")}
    in_repo = {p.name: p.read_bytes() for p in REPO_CONFIGS.glob("*.yaml")}
    assert packaged == in_repo
    assert set(shipped_configs()) >= {"tiny", "ovi_720x720_5s", "ovi_960x960_5s", "ovi_960x960_10s",
                                      "rtx3090_x1", "rtx3090_x4", "rtx3090_x8"}


@pytest.mark.parametrize("name", sorted(p.stem for p in REPO_CONFIGS.glob("*.yaml")))
def test_every_shipped_yaml_loads(name):
    by_path = load_config(REPO_CONFIGS / f"{name}.yaml")
    assert load_config(name) == by_path  # shipped configs load by name too
    assert json.loads(json.dumps(by_path.to_dict())) == by_path.to_dict()


def test_real_weight_configs_use_upstream_defaults():
    for name, model_name in [("ovi_720x720_5s", "720x720_5s"), ("ovi_960x960_5s", "960x960_5s"),
                             ("ovi_960x960_10s", "960x960_10s")]:
        cfg = load_config(name)
        assert (cfg.model_name, cfg.model, cfg.ckpt_dir, cfg.dtype) == (model_name, "ovi", "./ckpts", "bf16")
        assert (cfg.sample_steps, cfg.shift, cfg.solver_name, cfg.slg_layer) == (50, 5.0, "unipc", 11)
        assert (cfg.video_guidance_scale, cfg.audio_guidance_scale, cfg.seed) == (4.0, 3.0, 103)


def test_rtx3090_configs_mirror_the_seed_examples():
    x1, x4, x8 = (load_config(f"rtx3090_x{n}") for n in (1, 4, 8))
    assert (x1.model_name, x1.sp_size, x1.cpu_offload, x1.fp8, x1.use_fsdp, x1.use_tensor_cores) == (
        "720x720_5s", 1, True, False, False, True)
    for cfg, sp in ((x4, 4), (x8, 8)):
        assert (cfg.model_name, cfg.sp_size, cfg.cpu_offload, cfg.use_fsdp, cfg.fsdp_sharding_strategy) == (
            "960x960_10s", sp, False, True, "SHARD_GRAD_OP")
        assert cfg.use_optimized_comms and cfg.use_tensor_cores
    assert not x4.enable_async_comms and x8.enable_async_comms


def test_upstream_and_seed_yaml_keys_load_unchanged(tmp_path):
    path = tmp_path / "inference_fusion.yaml"
    path.write_text(yaml.safe_dump({**UPSTREAM_KEYS, **SEED_KEYS}))
    cfg = load_config(path)
    for key, value in {**UPSTREAM_KEYS, **SEED_KEYS}.items():
        assert getattr(cfg, key) == value, key
    assert cfg.model == "ovi"  # derived from model_name


def test_defaults_without_yaml_keys_are_upstream_code_defaults():
    cfg = load_config({})
    assert cfg == OviConfig()
    assert (cfg.ckpt_dir, cfg.sample_steps, cfg.shift, cfg.each_example_n_times, cfg.slg_layer) == (
        "./ckpts", 50, 5.0, 1, 11)
    assert (cfg.use_optimized_comms, cfg.enable_async_comms, cfg.use_tensor_cores) == (True, False, True)


def test_unknown_key_names_the_nearest_valid_key():
    with pytest.raises(ConfigError) as e:
        load_config({"sampl_steps": 30})
    assert str(e.value) == "unknown config key 'sampl_steps'; did you mean 'sample_steps'?"
    with pytest.raises(ConfigError, match="unknown config key 'zzz'; valid keys are: ckpt_dir"):
        load_config(None, zzz=1)


@pytest.mark.parametrize("key,value,fragment", [
    ("mode", "t2x", "mode 't2x': must be one of t2v, i2v, t2i2v"),
    ("solver_name", "unipcc", "solver_name 'unipcc': must be one of unipc, dpm++, euler (did you mean 'unipc'?)"),
    ("fsdp_sharding_strategy", "FULL", "fsdp_sharding_strategy 'FULL': must be one of FULL_SHARD"),
    ("attention_backend", "flash4", "attention_backend 'flash4': must be one of auto, flash3, flash2"),
    ("dtype", "fp16", "dtype 'fp16': must be one of auto, bf16, fp32"),
    ("device", "gpu", "device 'gpu': must be auto, cpu, cuda or cuda:N"),
    ("sample_steps", 0, "sample_steps 0: must be at least 1"),
    ("sample_steps", "ten", "sample_steps 'ten': must be an integer"),
    ("audio_guidance_scale", -1, "audio_guidance_scale -1.0: must be >= 0"),
    ("video_guidance_scale", -0.5, "video_guidance_scale -0.5: must be >= 0"),
    ("shift", 0, "shift 0.0: must be > 0"),
    ("sp_size", 0, "sp_size 0: must be at least 1"),
    ("seed", -3, "seed -3: must be a non-negative integer"),
    ("each_example_n_times", 0, "each_example_n_times 0: must be at least 1"),
    ("slg_layer", True, "slg_layer true: must be a block index"),
    ("fp8", "yes", "fp8 'yes': must be true or false"),
    ("device_memory_gb", 0, "device_memory_gb 0: must be a positive number of GB"),
    ("device_memory_gb", "lots", "device_memory_gb 'lots': must be a positive number"),
    ("model", "giant", "model 'giant': unknown architecture preset; choose one of mid, ovi, tiny"),
    ("model_name", "1080p", "model_name '1080p': unknown model; choose one of 720x720_5s, 960x960_5s, "
                            "960x960_10s, tiny"),
    ("video_frame_height_width", [700, 1280], "video_frame_height_width [700, 1280]: each side must be a "
                                              "positive multiple of 32, e.g. [704, 1280]"),
    ("video_frame_height_width", [0, 64], "e.g. [32, 64]"),
    ("video_frame_height_width", [128], "video_frame_height_width [128]: each side must be"),
    ("lora", [{"path": "a.pt", "scale": 1}], "lora [{'path': 'a.pt', 'scale': 1}]: unknown entry key 'scale'"),
    ("lora", ["a.pt", {"weight": 1}], "every entry needs a path"),
])
def test_bad_values_name_key_value_and_fix(key, value, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, **{key: value})
    assert fragment in str(e.value)
    assert isinstance(e.value, InputError)  # the CLI turns it into exit code 2


def test_yaml_file_problems_name_the_path(tmp_path):
    with pytest.raises(ConfigError, match="config file '.*nope.yaml' not found.*tiny"):
        load_config(tmp_path / "nope.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"config file '.*list.yaml' must hold a mapping.*got a list"):
        load_config(listy)
    broken = tmp_path / "broken.yaml"
    broken.write_text("mode: [t2v\n")
    with pytest.raises(ConfigError, match="broken.yaml' is not valid yaml"):
        load_config(broken)


def test_overrides_apply_on_top_and_values_are_normalised():
    cfg = load_config("ovi_720x720_5s", seed=7, shift=3, fsdp_sharding_strategy="shard_grad_op",
                      video_frame_height_width=(256, 320), ckpt_dir=Path("/data/ckpts"), slg_layer=False)
    assert (cfg.seed, cfg.shift, cfg.fsdp_sharding_strategy) == (7, 3.0, "SHARD_GRAD_OP")
    assert isinstance(cfg.shift, float) and cfg.video_frame_height_width == [256, 320]
    assert cfg.ckpt_dir == "/data/ckpts" and cfg.height_width == (256, 320)
    assert cfg.slg_layer_index is None and load_config(None, slg_layer=1).slg_layer_index == 1
    assert load_config(None, slg_layer=0).slg_layer_index is None
    assert load_config(None, slg_layer=-1).slg_layer_index is None


def test_lora_entries_are_normalised():
    cfg = load_config(None, lora=["styles/anime.safetensors:0.7", r"C:\loras\ink.safetensors",
                                  {"path": "x/detail.pt", "weight": 2, "name": "det", "merge": False}])
    assert cfg.lora == [
        {"path": "styles/anime.safetensors", "weight": 0.7, "name": "anime", "merge": True},
        {"path": r"C:\loras\ink.safetensors", "weight": 1.0, "name": r"C:\loras\ink", "merge": True},
        {"path": "x/detail.pt", "weight": 2.0, "name": "det", "merge": False},
    ]
    assert load_config(None, lora="one.pt:0.5").lora == [
        {"path": "one.pt", "weight": 0.5, "name": "one", "merge": True}]


def test_to_dict_round_trips_and_replace_validates():
    cfg = load_config("rtx3090_x4", lora=["a.pt:0.5"])
    assert load_config(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.replace(seed=1).seed == 1 and cfg.seed == 103
    with pytest.raises(ConfigError, match="sample_steps 0"):
        cfg.replace(sample_steps=0)
    with pytest.raises(ConfigError, match="did you mean 'seed'"):
        cfg.replace(sed=1)


def test_bundled_ckpt_dir_is_only_for_models_that_ship_weights():
    with pytest.raises(ConfigError, match="ckpt_dir 'bundled': model_name 'tiny' .* has no bundled weights.*"
                                          "set ckpt_dir"):
        load_config(None, model_name="tiny")
    with pytest.raises(ConfigError, match="has no bundled weights"):
        load_config(None, model="tiny")  # tiny dims cannot load the trained weights
    assert load_config(None, model_name="tiny", ckpt_dir="x").ckpt_dir == "x"


def test_replace_model_name_rederives_the_architecture_unless_set():
    cfg = load_config()
    assert cfg.replace(model_name="720x720_5s").model == "ovi"
    assert cfg.replace(model_name="720x720_5s").ckpt_dir == "./ckpts"  # the bundled folder was tiny_trained's
    assert cfg.replace(model_name="720x720_5s", ckpt_dir="/w").ckpt_dir == "/w"
    pinned = load_config(None, model_name="720x720_5s", model="tiny", ckpt_dir="c")  # tiny dims, 720 spec
    assert pinned.replace(model_name="960x960_5s").model == "tiny"  # explicit choice is kept
    assert cfg.replace(model_name="720x720_5s", model="tiny").model == "tiny"


def test_pending_features_load_but_refuse_to_run(monkeypatch):
    # no option is pending today (qint8 landed as quantize: int8); the mechanism stays for the next one
    monkeypatch.setitem(config_module.PENDING_FEATURES, "cfg_parallel", "a test feature")
    cfg = load_config(None, cfg_parallel=True)  # loading is fine
    with pytest.raises(NotAvailableError) as e:
        cfg.require_available()
    msg = str(e.value)
    assert msg.startswith("cfg_parallel: ") and "a test feature" in msg
    assert "set cfg_parallel: false" in msg


def test_upstream_qint8_is_mapped_once_to_quantize_int8(caplog):
    with caplog.at_level("INFO", logger="ovi.config"):
        cfg = load_config(None, qint8=True)
    assert cfg.quantize == "int8" and cfg.qint8 is True  # both kept: the sidecar shows where int8 came from
    assert "qint8: true (upstream key) -> quantize: int8" in caplog.text
    cfg.require_available()  # runnable now
    assert load_config(None, qint8=True, quantize="int8").quantize == "int8"
    assert load_config(None).quantize is None  # qint8 false leaves quantize to the memory profile
    with pytest.raises(ConfigError, match="qint8 true: .*quantize: fp8; drop qint8 or the quantize key"):
        load_config(None, qint8=True, quantize="fp8")


def test_require_available_allows_sp_and_shard_text_model():
    load_config(None, sp_size=4, fp8=True, cpu_offload=True).require_available()
    load_config(None, use_fsdp=True, shard_text_model=True).require_available()  # FSDP shards it (ParallelDims checks)
    load_config(None, lora=["a.safetensors:0.5"], lightning=True).require_available()  # LoRA has landed
    load_config(None, qint8=True, lightning=True).require_available()  # qint8 runs as quantize: int8
    load_config(None, use_fsdp=True, fsdp_sharding_strategy="auto").require_available()  # FSDP has landed


def test_parse_set_option():
    assert parse_set_option("sample_steps=30") == ("sample_steps", 30)
    assert parse_set_option(" video_frame_height_width = [256, 512]") == ("video_frame_height_width", [256, 512])
    assert parse_set_option("cfg_parallel=true") == ("cfg_parallel", True)
    assert parse_set_option("image_path=null") == ("image_path", None)
    assert parse_set_option("shift=3.5") == ("shift", 3.5)
    # prompts and paths stay text even when they parse as other yaml
    assert parse_set_option("text_prompt=A man says: hi") == ("text_prompt", "A man says: hi")
    assert parse_set_option("ckpt_dir=2024") == ("ckpt_dir", "2024")
    key, value = parse_set_option("lora=a.pt:0.5")
    assert load_config(None, **{key: value}).lora[0]["weight"] == 0.5
    with pytest.raises(ConfigError, match="--set expects key=value"):
        parse_set_option("sample_steps")
    with pytest.raises(ConfigError, match="did you mean 'sample_steps'"):
        parse_set_option("sample_step=4")
    with pytest.raises(ConfigError, match="--set mode: value '\\[t2v' is not valid yaml"):
        parse_set_option("mode=[t2v")


def test_every_field_is_a_known_key():
    assert set(UPSTREAM_KEYS) | set(SEED_KEYS) | {
        "model", "attention_backend", "cfg_parallel", "lora", "lightning", "dtype", "device",
        "save_latents", "profile_comms", "profile_dir", "profile_memory", "device_memory_gb", "world_size",
        "compile", "step_cache", "step_cache_threshold",
        "memory_profile", "blocks_on_device", "quantize", "vae_tiling", "text_encoder_device"} == set(FIELDS)
