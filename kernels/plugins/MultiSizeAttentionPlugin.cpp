// TensorRT IPluginV3 "MultiSizeAttention": shapes, formats and workspace for TensorRT; the work is
// prn_msa_enqueue (kernels/multi_size_attention.cu), the kernels CuPy runs too.
#include "MultiSizeAttentionPlugin.h"

#include "PrnPluginCommon.h"
#include "prn_launch.h"

#include <algorithm>
#include <string>

using namespace nvinfer1;

namespace prn_edge {
namespace plugin {

int32_t MultiSizeAttentionPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                                  DynamicPluginTensorDesc const*, int32_t nbOutputs) noexcept {
    if (nbInputs != 1 || nbOutputs != 1) {
        logError(kName, "expects 1 input (qkv) and 1 output");
        return -1;
    }
    Dims const& x = in[0].desc.dims;
    if (x.nbDims != 4) {
        logError(kName, "qkv must be (B, 3*num_heads*c, H, W)");
        return -1;
    }
    int64_t const C = x.d[1], H = x.d[2], W = x.d[3];
    if (C >= 0 && H >= 0 && W >= 0 &&
        prn_msa_workspace(1, mField, static_cast<int>(C), static_cast<int>(H), static_cast<int>(W), 0) == 0) {
        logError(kName, "unsupported qkv shape (C=" + std::to_string(C) + ", H=" + std::to_string(H) +
                            ", W=" + std::to_string(W) + "): C must be 3*num_heads*c, H == W divisible by "
                            "2^(num_heads-1), and 2^(num_heads-1) * W <= 2048");
        return -1;
    }
    return 0;
}

int32_t MultiSizeAttentionPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs,
                                                     DataType const* inputTypes, int32_t nbInputs) const noexcept {
    if (nbOutputs != 1 || nbInputs != 1) return -1;
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t MultiSizeAttentionPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*,
                                                  int32_t, DimsExprs* outputs, int32_t nbOutputs,
                                                  IExprBuilder& exprBuilder) noexcept {
    if (nbInputs != 1 || nbOutputs != 1 || inputs[0].nbDims != 4) return -1;
    outputs[0] = inputs[0];
    // (B, 3*heads*c, H, W) -> (B, heads*c, H, W): the V third of the channels' count.
    outputs[0].d[1] = exprBuilder.operation(DimensionOperation::kFLOOR_DIV, *inputs[0].d[1], *exprBuilder.constant(3));
    return 0;
}

bool MultiSizeAttentionPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut,
                                                         int32_t nbInputs, int32_t nbOutputs) noexcept {
    if (nbInputs != 1 || nbOutputs != 1 || pos < 0 || pos > 1) return false;
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR) return false;
    if (pos == 0) return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
    return desc.type == inOut[0].desc.type;
}

size_t MultiSizeAttentionPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                                  DynamicPluginTensorDesc const*, int32_t) const noexcept {
    if (nbInputs != 1) return 0;
    Dims const& mx = inputs[0].max;
    size_t bytes = 0;  // linear in B; C, H, W are fixed by the model
    for (int dtype = 0; dtype < 2; ++dtype)
        bytes = std::max(bytes, prn_msa_workspace(static_cast<int>(std::max<int64_t>(1, mx.d[0])), mField,
                                                  static_cast<int>(mx.d[1]), static_cast<int>(mx.d[2]),
                                                  static_cast<int>(mx.d[3]), dtype));
    return bytes;
}

int32_t MultiSizeAttentionPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs,
                                                PluginTensorDesc const*, int32_t nbOutputs) noexcept {
    if (nbInputs != 1 || nbOutputs != 1 || in[0].dims.nbDims != 4) return -1;
    return 0;
}

int32_t MultiSizeAttentionPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*,
                                          void const* const* inputs, void* const* outputs, void* workspace,
                                          cudaStream_t stream) noexcept {
    Dims const& x = inputDesc[0].dims;
    int const B = static_cast<int>(x.d[0]), C = static_cast<int>(x.d[1]);
    int const H = static_cast<int>(x.d[2]), W = static_cast<int>(x.d[3]);
    if (B == 0) return 0;
    int const dtype = kernelDType(inputDesc[0].type);
    size_t const needed = prn_msa_workspace(B, mField, C, H, W, dtype);
    cudaError_t const err =
        prn_msa_enqueue(inputs[0], outputs[0], workspace, needed, B, mField, C, H, W, dtype, stream);
    if (err != cudaSuccess) {
        logError(kName, std::string("launch failed: ") + cudaGetErrorString(err) + " (qkv " + std::to_string(B) +
                            "x" + std::to_string(C) + "x" + std::to_string(H) + "x" + std::to_string(W) + ")");
        return -1;
    }
    return 0;
}

}  // namespace plugin
}  // namespace prn_edge
