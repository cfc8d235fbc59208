// TensorRT IPluginV3 "ProtoResidual": shapes, formats and workspace for TensorRT; the work itself
// is prn_proto_residual_enqueue (kernels/proto_residual.cu), the kernels CuPy runs too.
#include "ProtoResidualPlugin.h"

#include "PrnPluginCommon.h"
#include "prn_launch.h"

#include <algorithm>
#include <string>

using namespace nvinfer1;

namespace prn_edge {
namespace plugin {

namespace {
constexpr int32_t kNbInputs = 3;  // features, prototypes, sqnorm
}  // namespace

int32_t ProtoResidualPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                             DynamicPluginTensorDesc const*, int32_t nbOutputs) noexcept {
    if (nbInputs != kNbInputs || nbOutputs != 1) {
        logError(kName, "expects 3 inputs (features, prototypes, sqnorm) and 1 output");
        return -1;
    }
    Dims const& f = in[0].desc.dims;
    Dims const& bank = in[1].desc.dims;
    Dims const& sq = in[2].desc.dims;
    if (f.nbDims < 2 || bank.nbDims != 2 || sq.nbDims != 1) {
        logError(kName, "needs features (B, C, H, W), prototypes (K, C*H*W) and sqnorm (K,)");
        return -1;
    }
    bool known = true;  // -1 marks a dimension only known at run time
    for (int32_t i = 1; i < f.nbDims; ++i) known = known && f.d[i] >= 0;
    if (known && bank.d[1] >= 0 && volume(f, 1) != bank.d[1]) {
        logError(kName, "prototypes must have C*H*W = " + std::to_string(volume(f, 1)) + " columns, got " +
                            std::to_string(bank.d[1]));
        return -1;
    }
    if (bank.d[0] >= 0 && sq.d[0] >= 0 && bank.d[0] != sq.d[0]) {
        logError(kName, "sqnorm must have one entry per prototype");
        return -1;
    }
    return 0;
}

int32_t ProtoResidualPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs,
                                                DataType const* inputTypes, int32_t nbInputs) const noexcept {
    if (nbOutputs != 1 || nbInputs != kNbInputs) return -1;
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t ProtoResidualPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
                                             DimsExprs* outputs, int32_t nbOutputs, IExprBuilder&) noexcept {
    if (nbInputs != kNbInputs || nbOutputs != 1) return -1;
    outputs[0] = inputs[0];  // the residual has the features' shape
    return 0;
}

bool ProtoResidualPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut,
                                                    int32_t nbInputs, int32_t nbOutputs) noexcept {
    if (nbInputs != kNbInputs || nbOutputs != 1 || pos < 0 || pos >= kNbInputs + 1) return false;
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR) return false;
    switch (pos) {
        case 0: return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
        case 2: return desc.type == DataType::kFLOAT;  // sqnorm stays FP32
        default: return desc.type == inOut[0].desc.type;  // prototypes and residual follow the features
    }
}

size_t ProtoResidualPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                             DynamicPluginTensorDesc const*, int32_t) const noexcept {
    if (nbInputs != kNbInputs) return 0;
    // Enough for every shape of the profile: batches up to the largest, any bank size between
    // the profile's bounds (the bank is an initializer, so min == max in practice), both types.
    int const maxB = static_cast<int>(std::max<int64_t>(1, inputs[0].max.d[0]));
    int64_t const minK = std::max<int64_t>(1, inputs[1].min.d[0]);
    int64_t const maxK = std::max<int64_t>(minK, inputs[1].max.d[0]);
    long long const D = std::max<int64_t>(1, inputs[1].max.d[1]);
    size_t bytes = 0;
    int64_t const step = std::max<int64_t>(1, (maxK - minK) / 256);  // bounded work for odd profiles
    for (int64_t k = minK;; k = std::min(maxK, k + step)) {
        for (int dtype = 0; dtype < 2; ++dtype)
            bytes = std::max(bytes, prn_proto_residual_workspace(maxB, static_cast<int>(k), D, dtype));
        if (k == maxK) break;
    }
    return bytes;
}

int32_t ProtoResidualPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*,
                                           int32_t nbOutputs) noexcept {
    if (nbInputs != kNbInputs || nbOutputs != 1) return -1;
    if (in[1].dims.d[1] != volume(in[0].dims, 1) || in[1].dims.d[0] != in[2].dims.d[0]) {
        logError(kName, "features, prototypes and sqnorm shapes do not agree");
        return -1;
    }
    return 0;
}

int32_t ProtoResidualPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*,
                                     void const* const* inputs, void* const* outputs, void* workspace,
                                     cudaStream_t stream) noexcept {
    int64_t const B = inputDesc[0].dims.d[0];
    int64_t const K = inputDesc[1].dims.d[0];
    int64_t const D = volume(inputDesc[0].dims, 1);
    if (B == 0 || D == 0) return 0;
    int const dtype = kernelDType(inputDesc[0].type);
    size_t const needed = prn_proto_residual_workspace(static_cast<int>(B), static_cast<int>(K), D, dtype);
    cudaError_t const err = prn_proto_residual_enqueue(inputs[0], inputs[1], static_cast<float const*>(inputs[2]),
                                                       outputs[0], workspace, needed, static_cast<int>(B),
                                                       static_cast<int>(K), D, mField, dtype, stream);
    if (err != cudaSuccess) {
        logError(kName, std::string("launch failed: ") + cudaGetErrorString(err) + " (B=" + std::to_string(B) +
                            ", K=" + std::to_string(K) + ", D=" + std::to_string(D) + ")");
        return -1;
    }
    return 0;
}

}  // namespace plugin
}  // namespace prn_edge
