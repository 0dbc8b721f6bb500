"""Fixtures: a small four-light dataset on disk, a briefly trained 32 px ShuffleNetV2 MM-MIMO, and
its exported FP32 graph. Session-scoped: trained and exported once for every export test."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from wbc_edge.data.images import write_image
from wbc_edge.spec import CLASSES, MODALITIES, spec_for

IMG = 40  # stored crop size; the model reads 32 px (cell_to_input resizes)
SIZE = 32
# Imbalanced like blood, but small: the rare classes still have a few cells.
COUNTS = {"neutrophil": 60, "lymphocyte": 40, "eosinophil": 20, "monocyte": 14, "basophil": 10}


def render_cell(label: int, light: int, rng: np.random.Generator) -> np.ndarray:
    """A disc whose radius, hue and texture depend on the class and the light, with noise."""
    yy, xx = np.mgrid[:IMG, :IMG]
    cy, cx = IMG / 2 + rng.normal(0, 2, 2)
    radius = 7 + 2 * label + rng.normal(0, 1.0)
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2
    base = np.full((IMG, IMG, 3), 30.0 if light == 0 else 200.0)
    colour = np.array([(60 + 45 * label + 20 * light) % 255, (200 - 35 * label) % 255, (90 + 30 * light + 25 * label) % 255], float)
    stripes = (np.sin(xx * (0.3 + 0.25 * label)) > 0)[..., None]
    img = base.copy()
    img[disc] = colour
    img = img + disc[..., None] * stripes * 25.0 + rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def spec():
    return spec_for("mimo", MODALITIES, backbone="shufflenet_v2_x0_5", input_size=SIZE)


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cells")
    rng = np.random.default_rng(7)
    for label, (name, n) in enumerate(COUNTS.items()):
        for i in range(n):
            for light_index, light in enumerate(MODALITIES):
                write_image(root / name / f"{name[:3]}{i:03d}" / f"{light}.png", render_cell(label, light_index, rng))
    return root


@pytest.fixture(scope="session")
def dataset(dataset_dir):
    from wbc_edge.data import open_dataset

    return open_dataset(dataset_dir)


@pytest.fixture(scope="session")
def split(dataset):
    """Every other cell of each class to training, the rest held out (stratified, deterministic)."""
    train, val = [], []
    for k in range(len(dataset.classes)):
        ids = [c.cell_id for c, lab in zip(dataset.cells, dataset.labels) if lab == k]
        train += ids[0::2]
        val += ids[1::2]
    return {"train": train, "val": val}


def _model_inputs(dataset, ids, spec):
    from wbc_edge.calibration import inputs_from_dataset, labels_in_spec_order
    from wbc_edge.calibration.sets import indices_for_ids

    idx = indices_for_ids(dataset, ids)
    return inputs_from_dataset(dataset, idx, spec), labels_in_spec_order(dataset, idx, spec)


@pytest.fixture(scope="session")
def val_data(dataset, split, spec):
    return _model_inputs(dataset, split["val"], spec)


@contextmanager
def torch_threads(n: int):
    """One intra-op thread: on a busy 2-core machine more threads mostly spin (seen: 10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def trained_model(dataset, split, spec):
    with torch_threads(1):
        return _train(dataset, split, spec)


def _train(dataset, split, spec):
    """A few quick epochs, every head on the same cell: better than random weights for INT8 checks."""
    from wbc_edge.preprocess import normalise
    from wbc_edge.train.models import create_model

    torch.manual_seed(0)
    inputs, labels = _model_inputs(dataset, split["train"], spec)
    x = torch.from_numpy(normalise(inputs, spec))
    y = torch.from_numpy(labels)
    model = create_model(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    epochs, batch = 12, 16
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=epochs * -(-len(x) // batch))
    model.train()
    for _ in range(epochs):
        for rows in torch.randperm(len(x), generator=gen).split(batch):
            logits = model(x[rows])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, spec.num_classes), y[rows].repeat_interleave(spec.num_heads))
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    return model.eval()


@pytest.fixture(scope="session")
def fp32_bytes(trained_model, spec):
    from wbc_edge.export.onnx_export import export_onnx_bytes

    with torch_threads(1):
        return export_onnx_bytes(trained_model, spec)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, trained_model, spec, dataset_dir, dataset, split):
    """A run directory laid out as train-core writes it: model.pt and split.json for fold 0."""
    run = tmp_path_factory.mktemp("run")
    method_dir = run / "folds" / "fold0" / "mimo-kd"
    method_dir.mkdir(parents=True)
    torch.save({"state_dict": trained_model.state_dict(), "spec": spec.to_dict(), "config": {}, "metrics": {}}, method_dir / "model.pt")
    (run / "folds" / "fold0" / "split.json").write_text(json.dumps(
        {"dataset": str(dataset_dir), "dataset_fingerprint": dataset.fingerprint(), "train": split["train"], "val": split["val"]}))
    return run
