import numpy as np

from wbc_edge.data import CellRecord, open_dataset, read_manifest, write_image, write_manifest


def test_manifest_round_trip_reads_back_cells(tmp_path):
    records = []
    for i, label in enumerate(["neutrophil", "LYM"]):
        paths = {}
        for light in ("fluorescent", "color1"):
            paths[light] = tmp_path / label / f"c{i}" / f"{light}.png"
            write_image(paths[light], np.full((6, 5, 3), 40 * i, np.uint8))
        records.append(CellRecord(f"c{i}", label, "donor1", paths))
    write_manifest(tmp_path / "manifest.csv", records, ["fluorescent", "color1"])
    ds = read_manifest(tmp_path / "manifest.csv")
    assert [c.cell_id for c in ds.cells] == ["c0", "c1"]
    assert list(ds.labels) == [0, 1]
    assert ds.cells[0].paths == records[0].paths
    assert int(ds.load(1)["color1"][0, 0, 0]) == 40
    assert open_dataset(tmp_path).fingerprint() == ds.fingerprint()


def test_data_package_never_imports_torch(four_light):
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
        "import wbc_edge.data, wbc_edge.data.manifest, wbc_edge.data.folders, wbc_edge.data.dataset\n"
        f"ds = wbc_edge.data.open_dataset({str(four_light.root)!r})\n"
        "ds.load(0)\n"
        "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules if sys.modules[m] is not None)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
