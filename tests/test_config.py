"""Config: reference defaults, YAML + command-line precedence, the seed's flags, clear errors."""
import pytest

from src.config import Config, ConfigError
from src.config_loader import config_from_values, load_config, load_yaml, parse_config
from tests.conftest import ROOT, run_script


def test_defaults_are_the_reference_values():
    c = Config()
    assert c.num_classes == 0 and c.class_count == 81 and c.classes == ()  # 0: from the data
    assert c.img_shape == (300, 300) and c.num_ssd_boxes == 8732
    assert (c.match_threshold, c.nms_threshold, c.min_score, c.max_boxes) == (0.5, 0.6, 0.1, 100)
    assert (c.lr_init, c.lr_end_rate, c.warmup_epochs) == (0.001, 0.001, 2.0)
    assert (c.weight_decay, c.momentum, c.loss_scale) == (4e-5, 0.9, 1024.0)
    assert c.num_default == (4, 6, 6, 6, 4, 4)
    assert c.extras_out_channels == (256, 512, 512, 256, 256, 256)
    assert c.feature_size == (38, 19, 10, 5, 3, 1) and c.steps == (7, 15, 30, 60, 100, 300)
    assert c.aspect_ratios == ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
    assert (c.min_scale, c.max_scale, c.prior_scaling) == (0.2, 0.95, (0.1, 0.2))
    assert (c.gamma, c.alpha) == (2.0, 0.75)
    assert (c.epoch_size, c.batch_size, c.save_checkpoint_epochs) == (500, 32, 10)
    assert "/home/" not in str(c.to_dict())


def test_shipped_yaml_matches_defaults_except_documented_lr_and_class_count():
    c = load_config(f"{ROOT}/configs/ssd_resnet34.yaml")
    assert c.replace(lr=Config().lr, config="", num_classes=0) == Config()
    assert c.lr == 0.075 and c.num_classes == 81 == Config().class_count


def test_yaml_then_command_line_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("batch_size: 4\nlr: 0.01\nsteps: [8, 16, 32, 64, 100, 300]\n")
    c = parse_config(["--config", str(path), "--lr", "0.2"])
    assert c.batch_size == 4 and c.lr == 0.2 and c.steps == (8, 16, 32, 64, 100, 300)


def test_seed_flags_keep_their_meaning():
    c = parse_config(["--data_url", "/data/coco", "--train_url", "/out", "--mindrecord_url",
                      "/mr", "--device_target", "cpu", "--epoch_size", "3", "--batch_size", "2",
                      "--pre_trained", "a.ckpt", "--pre_trained_epoch_size", "1",
                      "--save_checkpoint_epochs", "1", "--loss_scale", "512",
                      "--filter_weight", "True", "--only_create_dataset", "--dataset", "coco"])
    assert c.coco_root == "/data/coco" and c.output_dir == "/out" and c.mindrecord_dir == "/mr"
    assert c.run_platform == "CPU" and c.epoch_size == 3 and c.batch_size == 2
    assert c.pre_trained == "a.ckpt" and c.pre_trained_epoch_size == 1
    assert c.save_checkpoint_epochs == 1 and c.loss_scale == 512.0
    assert c.filter_weight is True and c.only_create_dataset is True
    assert parse_config(["--mindrecord", "/m2"]).mindrecord_dir == "/m2"
    assert parse_config(["--run_platform", "Ascend"]).run_platform == "Ascend"
    assert parse_config(["--filter_weight", "false"]).filter_weight is False


@pytest.mark.parametrize("argv, words", [
    (["--batch_size", "0"], "batch_size"),
    (["--batch_size", "two"], "expected an integer"),
    (["--run_platform", "TPU"], "run_platform"),
    (["--filter_weight", "maybe"], "true or false"),
    (["--num_default", "4,6,6,6,4"], "num_default"),
    (["--no_such_flag", "1"], "unrecognized"),
])
def test_bad_values_are_refused_with_the_flag_named(argv, words, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_config(argv)
    assert stop.value.code == 2
    assert words in capsys.readouterr().err


def test_yaml_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("batch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*batch_sise"):
        load_yaml(str(path))
    path.write_text("extras_ratios: [0.2]\n")
    with pytest.raises(ConfigError, match="not used here"):
        load_yaml(str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(str(tmp_path / "missing.yaml"))


def test_resolved_config_round_trips(tmp_path):
    c = config_from_values({"batch_size": "4", "aspect_ratios": "[[2], [2, 3], [2, 3], [2, 3], "
                                                               "[2], [3]]"})
    path = tmp_path / "run" / "config.yaml"
    c.save(str(path))
    assert load_config(str(path)).replace(config="") == c


def test_class_list_must_match_num_classes():
    with pytest.raises(ConfigError, match="classes lists 2 names but num_classes is 4"):
        Config(classes=("background", "a"), num_classes=4).validate()
    assert Config(num_classes=2, classes=("background", "a")).validate().num_classes == 2


def test_data_url_sets_the_root_of_the_chosen_format():
    assert parse_config(["--dataset", "voc", "--data_url", "/v"]).voc_root == "/v"
    assert parse_config(["--dataset", "other", "--data_url", "/i"]).image_dir == "/i"


def test_cli_rejects_bad_flag_value_with_clear_message():
    result = run_script(["train.py", "--batch_size", "-3"], timeout=120)
    assert result.returncode == 2
    assert "batch_size" in result.stderr and "out of range" in result.stderr


def test_a_prefix_of_a_flag_is_not_taken_for_the_flag(capsys):
    with pytest.raises(SystemExit) as stop:
        parse_config(["--epoch", "3"])      # not --epoch_size
    assert stop.value.code == 2 and "unrecognized arguments: --epoch 3" in capsys.readouterr().err
    assert parse_config(["--epoch_size", "3"]).epoch_size == 3


def test_derived_keys_are_accepted_only_when_they_agree(tmp_path):
    path = tmp_path / "reference.yaml"
    path.write_text("model: ssd_resnet34\nnum_ssd_boxes: 8732\nnum_default: [4, 6, 6, 6, 4, 4]\n")
    assert load_config(str(path)).num_ssd_boxes == 8732
    path.write_text("aspect_ratios: [[2], [2, 3], [2, 3], [2, 3], [2], [2, 3]]\n"
                    "num_ssd_boxes: 8732\n")
    with pytest.raises(ConfigError, match=r"reference\.yaml: num_ssd_boxes 8732 disagrees with "
                                          r"8734, which follows from feature_size"):
        load_config(str(path))
    assert "num_ssd_boxes" not in Config().to_dict() and "model" not in Config().to_dict()


def test_every_setting_is_in_the_resolved_config(tmp_path):
    path = tmp_path / "config.yaml"
    parse_config(["--conv_impl", "mindspore", "--conv_threads", "3", "--crop_rule", "ssd"]).save(
        str(path))
    text = path.read_text()
    assert "conv_impl: mindspore" in text and "conv_threads: 3" in text
    assert "crop_rule: ssd" in text and "#   num_ssd_boxes: 8732" in text
    again = load_config(str(path))
    assert (again.conv_impl, again.conv_threads, again.crop_rule) == ("mindspore", 3, "ssd")


def test_pre_trained_epoch_size_needs_a_pre_trained_checkpoint():
    with pytest.raises(ConfigError, match="pre_trained_epoch_size 5 .* none is given"):
        load_config(pre_trained_epoch_size=5)


FLOAT_KEYS = [f.name for f in Config.__dataclass_fields__.values() if isinstance(f.default, float)]


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e400"])
def test_non_finite_floats_are_refused_with_the_key_named(value, capsys, tmp_path):
    assert {"lr", "warmup_epochs", "momentum", "min_score"} <= set(FLOAT_KEYS)
    for key in FLOAT_KEYS:
        with pytest.raises(SystemExit) as stop:
            parse_config([f"--{key}={value}"])
        assert stop.value.code == 2
        assert f"{key}: " in capsys.readouterr().err
        with pytest.raises(ConfigError, match=f"^{key}: .* not a finite number"):
            load_config(**{key: value})
    path = tmp_path / "bad.yaml"
    path.write_text("warmup_epochs: .inf\n")
    with pytest.raises(ConfigError, match="warmup_epochs: inf is not a finite number"):
        load_config(str(path))
    with pytest.raises(ConfigError, match=r"prior_scaling: \[0.1, nan\] holds a value that is "
                                          "not a finite number"):
        load_config(prior_scaling=(0.1, float("nan")))
    with pytest.raises(ConfigError, match="--batch_size: expected an integer, got 'inf'"):
        config_from_values({"batch_size": "inf"})


def test_lr_inf_on_the_command_line_exits_2_without_a_traceback():
    result = run_script(["train.py", "--lr", "inf", "--check_dataset"])
    assert result.returncode == 2, result.stderr
    assert "lr: inf is not a finite number" in result.stderr
    assert "Traceback" not in result.stderr


def test_data_workers_follow_the_cores_shared_by_the_job(monkeypatch):
    """num_parallel_workers 0 (the default): this process's cores over the job's processes
    (MS_WORKER_NUM from msrun, else RANK_SIZE), 1 to 8; a given count is kept. Threads and
    float32 images on CPU, processes and uint8 on the accelerators, unless told."""
    import os

    from src.data.feed import feed_settings

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(24)), raising=False)
    for name in ("SSD_LOCAL_PROCESSES", "MS_WORKER_NUM", "RANK_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert Config().workers == 8 and Config(num_parallel_workers=3).workers == 3
    monkeypatch.setenv("RANK_SIZE", "8")
    assert Config().workers == 3
    monkeypatch.setenv("MS_WORKER_NUM", "48")
    assert Config().workers == 1
    # 48 processes on 6 hosts: the launcher tells each that 8 share this host's 24 cores
    monkeypatch.setenv("SSD_LOCAL_PROCESSES", "8")
    assert Config().workers == 3
    assert feed_settings(Config(), "CPU") == (False, False)
    assert feed_settings(Config(), "GPU") == (True, True) == feed_settings(Config(), "Ascend")
    assert feed_settings(Config(data_workers="threads", input_dtype="float32"), "GPU") == (
        False, False)
    assert feed_settings(Config(data_workers="processes", input_dtype="uint8"), "CPU") == (
        True, True)
