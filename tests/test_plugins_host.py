"""The TensorRT plugin library builds and its plugins behave, host side only (no GPU, no libnvinfer).

Builds ``libprn_edge_plugins.so`` with the repository's CMakeLists.txt against TensorRT's public
headers, then a small C++ driver loads it the way TensorRT does (``getCreators``) and checks
what TensorRT asks a plugin at build time: identities (against export/plugin_spec.py), fields,
type/format support, output types, workspace sizes (against the Python plan), serialization
round trip, clone, and rejection of bad fields and shapes. ``enqueue`` needs a GPU and is not
called. Skipped where the TensorRT headers (set TENSORRT_INCLUDE_DIR), nvcc, cmake or g++ are
missing: CI has no TensorRT headers, a development machine with them runs this.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO
from prn_edge.export import plugin_spec
from prn_edge.kernels import msa_plan, proto_plan

pytestmark = pytest.mark.slow

_HEADER_DIRS = ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu", "/usr/local/tensorrt/include",
                "/usr/include")


def _tensorrt_include() -> Path | None:
    env = os.environ.get("TENSORRT_INCLUDE_DIR")
    for d in ([env] if env else []) + list(_HEADER_DIRS):
        if d and (Path(d) / "NvInferRuntime.h").is_file():
            return Path(d)
    return None


_DRIVER = r"""
#include <NvInferRuntime.h>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

using namespace nvinfer1;
extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

static DynamicPluginTensorDesc desc(std::vector<int64_t> dims, DataType type) {
    DynamicPluginTensorDesc d{};
    d.desc.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i) d.desc.dims.d[i] = d.min.d[i] = d.max.d[i] = d.opt.d[i] = dims[i];
    d.min.nbDims = d.max.nbDims = d.opt.nbDims = d.desc.dims.nbDims;
    d.desc.type = type;
    d.desc.format = TensorFormat::kLINEAR;
    return d;
}

static IPluginV3* make(IPluginCreatorV3One* c, char const* field, PluginFieldType type, void const* value) {
    PluginField f(field, value, type, 1);
    PluginFieldCollection fc{1, &f};
    return c->createPlugin("test", &fc, TensorRTPhase::kBUILD);
}

int main() {
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = getCreators(n);
    std::printf("{\"creators\": [");
    for (int32_t i = 0; i < n; ++i) {
        auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
        PluginFieldCollection const* fc = c->getFieldNames();
        std::printf("%s{\"interface\": \"%s\", \"name\": \"%s\", \"version\": \"%s\", \"namespace\": \"%s\", \"fields\": [",
                    i ? ", " : "", c->getInterfaceInfo().kind, c->getPluginName(), c->getPluginVersion(),
                    c->getPluginNamespace());
        for (int32_t j = 0; j < fc->nbFields; ++j)
            std::printf("%s[\"%s\", %d]", j ? ", " : "", fc->fields[j].name, static_cast<int>(fc->fields[j].type));
        std::printf("]}");
    }
    std::printf("]");

    auto* proto = static_cast<IPluginCreatorV3One*>(creators[0]);
    auto* msa = static_cast<IPluginCreatorV3One*>(creators[1]);
    int32_t one = 1, two = 2, five = 5, four = 4;
    int64_t one64 = 1;
    std::printf(", \"bad_mode_rejected\": %s", make(proto, "mode", PluginFieldType::kINT32, &two) ? "false" : "true");
    std::printf(", \"bad_heads_rejected\": %s", make(msa, "num_heads", PluginFieldType::kINT32, &five) ? "false" : "true");
    IPluginV3* p64 = make(proto, "mode", PluginFieldType::kINT64, &one64);
    std::printf(", \"int64_field_accepted\": %s", p64 ? "true" : "false");
    delete p64;

    // ---- ProtoResidual ----
    IPluginV3* p = make(proto, "mode", PluginFieldType::kINT32, &one);
    auto* core = static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* run = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    DataType F = DataType::kFLOAT, H = DataType::kHALF;
    std::vector<DynamicPluginTensorDesc> io = {desc({33, 64, 64, 64}, H), desc({300, 262144}, H), desc({300}, F),
                                               desc({33, 64, 64, 64}, H)};
    bool formats = build->supportsFormatCombination(0, io.data(), 3, 1) && build->supportsFormatCombination(1, io.data(), 3, 1)
        && build->supportsFormatCombination(2, io.data(), 3, 1) && build->supportsFormatCombination(3, io.data(), 3, 1);
    io[2].desc.type = H;
    bool sq_half_rejected = !build->supportsFormatCombination(2, io.data(), 3, 1);
    io[2].desc.type = F;
    io[1].desc.type = F;
    bool mixed_rejected = !build->supportsFormatCombination(1, io.data(), 3, 1);
    io[1].desc.type = H;
    io[0].desc.format = TensorFormat::kCHW32;
    bool vectorized_rejected = !build->supportsFormatCombination(0, io.data(), 3, 1);
    io[0].desc.format = TensorFormat::kLINEAR;
    DataType in_types[3] = {H, H, F}, out_type = F;
    build->getOutputDataTypes(&out_type, 1, in_types, 3);
    int32_t configured = build->configurePlugin(io.data(), 3, io.data() + 3, 1);
    io[1].desc.dims.d[1] = 1000;
    int32_t bad_configured = build->configurePlugin(io.data(), 3, io.data() + 3, 1);
    io[1].desc.dims.d[1] = 262144;
    size_t ws = build->getWorkspaceSize(io.data(), 3, io.data() + 3, 1);
    PluginFieldCollection const* ser = run->getFieldsToSerialize();
    IPluginV3* again = proto->createPlugin("x", ser, TensorRTPhase::kRUNTIME);
    auto* again_run = static_cast<IPluginV3OneRuntime*>(again->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    int32_t round_trip = *static_cast<int32_t const*>(again_run->getFieldsToSerialize()->fields[0].data);
    IPluginV3* cl = p->clone();
    std::printf(", \"proto\": {\"name\": \"%s\", \"formats\": %d, \"sqnorm_half_rejected\": %d, \"mixed_rejected\": %d, "
                "\"vectorized_rejected\": %d, \"out_type_is_half\": %d, \"outputs\": %d, \"configured\": %d, "
                "\"bad_configured\": %d, \"workspace\": %zu, \"serialized\": [\"%s\", %d], \"round_trip\": %d, \"clone\": %d}",
                core->getPluginName(), formats, sq_half_rejected, mixed_rejected, vectorized_rejected,
                out_type == H, build->getNbOutputs(), configured, bad_configured, ws, ser->fields[0].name,
                *static_cast<int32_t const*>(ser->fields[0].data), round_trip, cl != nullptr);
    delete cl; delete again; delete p;

    // ---- MultiSizeAttention ----
    IPluginV3* m = make(msa, "num_heads", PluginFieldType::kINT32, &four);
    auto* mbuild = static_cast<IPluginV3OneBuild*>(m->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* mrun = static_cast<IPluginV3OneRuntime*>(m->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    std::vector<DynamicPluginTensorDesc> mio = {desc({7, 1536, 64, 64}, F), desc({7, 512, 64, 64}, F)};
    bool mformats = mbuild->supportsFormatCombination(0, mio.data(), 1, 1) && mbuild->supportsFormatCombination(1, mio.data(), 1, 1);
    mio[1].desc.type = H;
    bool mmixed_rejected = !mbuild->supportsFormatCombination(1, mio.data(), 1, 1);
    mio[1].desc.type = F;
    int32_t mconfigured = mbuild->configurePlugin(mio.data(), 1, mio.data() + 1, 1);
    size_t mws = mbuild->getWorkspaceSize(mio.data(), 1, mio.data() + 1, 1);
    std::vector<DynamicPluginTensorDesc> bad = {desc({7, 1536, 64, 32}, F), desc({7, 512, 64, 32}, F)};
    int32_t mbad = mbuild->configurePlugin(bad.data(), 1, bad.data() + 1, 1);
    PluginFieldCollection const* mser = mrun->getFieldsToSerialize();
    std::printf(", \"msa\": {\"formats\": %d, \"mixed_rejected\": %d, \"configured\": %d, \"bad_configured\": %d, "
                "\"workspace\": %zu, \"serialized\": [\"%s\", %d]}}\n",
                mformats, mmixed_rejected, mconfigured, mbad, mws, mser->fields[0].name,
                *static_cast<int32_t const*>(mser->fields[0].data));
    delete m;
    return 0;
}
"""


@pytest.fixture(scope="module")
def plugin_report(tmp_path_factory):
    include = _tensorrt_include()
    if include is None:
        pytest.skip("TensorRT headers not found (set TENSORRT_INCLUDE_DIR to the include/ of the TensorRT "
                    "release or of the open-source NVIDIA/TensorRT repository)")
    for tool in ("cmake", "g++"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found")
    from prn_edge.kernels._compile import find_cuda_include, find_nvcc
    if find_nvcc() is None:
        pytest.skip("nvcc not found: the plugin library compiles the kernels")
    build = tmp_path_factory.mktemp("plugins")
    # One architecture is enough here: the kernels' per-arch compile is tests/test_kernels_compile.py.
    subprocess.run(["cmake", "-S", str(REPO), "-B", str(build), f"-DTENSORRT_INCLUDE_DIR={include}",
                    "-DPRN_CUDA_ARCHITECTURES=87"], check=True, capture_output=True, timeout=300)
    proc = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lib = build / "libprn_edge_plugins.so"
    assert lib.is_file()
    driver = build / "driver.cpp"
    driver.write_text(_DRIVER)
    exe = build / "driver"
    cuda_include = find_cuda_include()
    if cuda_include is None:
        pytest.skip("the CUDA toolkit's include/ folder was not found (set CUDA_HOME)")
    subprocess.run(["g++", "-std=c++17", "-isystem", str(include), "-isystem", str(cuda_include), str(driver),
                    str(lib), f"-Wl,-rpath,{build}", "-o", str(exe)], check=True, capture_output=True, timeout=300)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=60).stdout
    return json.loads(out), lib


def test_library_exports_only_what_tensorrt_needs(plugin_report):
    _, lib = plugin_report
    if shutil.which("nm") is None:
        pytest.skip("nm not found")
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(lib)], capture_output=True, text=True).stdout
    assert "nvinfer" not in undefined.lower() and "getPluginRegistry" not in undefined
    defined = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True).stdout
    assert " getCreators" in defined and " setLoggerFinder" in defined


def test_creators_match_the_plugin_spec(plugin_report):
    report, _ = plugin_report
    by_name = {c["name"]: c for c in report["creators"]}
    assert set(by_name) == set(plugin_spec.PLUGINS)
    for name, spec in plugin_spec.PLUGINS.items():
        c = by_name[name]
        assert c["interface"] == "PLUGIN CREATOR_V3ONE"
        assert (c["version"], c["namespace"]) == (spec.version, spec.namespace)
        assert [f[0] for f in c["fields"]] == list(spec.fields)
        assert all(f[1] == 5 for f in c["fields"])  # PluginFieldType::kINT32
    assert report["bad_mode_rejected"] and report["bad_heads_rejected"] and report["int64_field_accepted"]


def test_proto_residual_plugin_build_interface(plugin_report):
    p = plugin_report[0]["proto"]
    assert p["name"] == plugin_spec.PROTO_RESIDUAL
    assert p["formats"] and p["sqnorm_half_rejected"] and p["mixed_rejected"] and p["vectorized_rejected"]
    assert p["out_type_is_half"] and p["outputs"] == 1
    assert p["configured"] == 0 and p["bad_configured"] != 0
    expected = max(proto_plan(b, 300, 262144, item, True).workspace_bytes for b in range(1, 34) for item in (2, 4))
    assert p["workspace"] == expected
    assert p["serialized"] == [plugin_spec.MODE_FIELD, 1] and p["round_trip"] == 1 and p["clone"]


def test_multi_size_attention_plugin_build_interface(plugin_report):
    m = plugin_report[0]["msa"]
    assert m["formats"] and m["mixed_rejected"]
    assert m["configured"] == 0 and m["bad_configured"] != 0
    expected = max(msa_plan(7, 4, 1536, 64, 64, item, True).workspace_bytes for item in (2, 4))
    assert m["workspace"] == expected
    assert m["serialized"] == [plugin_spec.NUM_HEADS_FIELD, 4]
