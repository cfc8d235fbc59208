// TensorRT plugin "MultiSizeAttention" v1 (namespace "prn_edge"): the fused attention core of one
// multi-size attention layer, kernels/multi_size_attention.cu.
//
//   input:   0 qkv (B, 3*heads*c, H, W)  FP32 or FP16, linear; channels [Q heads | K heads | V heads]
//   output:  0 out (B, heads*c, H, W)    same type: head s over patches of side H >> s,
//                                        softmax(Q K^T / d) V with d = c*p*p, FP32 scores and softmax
//   field:   num_heads (int32, 1..4; PRN uses 4)
//   workspace: per-slice partial scores and the softmax weights (FP32, kernels/prn_plan.h)
#ifndef PRN_MULTI_SIZE_ATTENTION_PLUGIN_H
#define PRN_MULTI_SIZE_ATTENTION_PLUGIN_H

#include <NvInferRuntime.h>

#include <cstdint>

#include "PrnPluginBase.h"

namespace prn_edge {
namespace plugin {

class MultiSizeAttentionPlugin : public PrnPlugin<MultiSizeAttentionPlugin> {
public:
    static constexpr char const* kName = "MultiSizeAttention";
    static constexpr char const* kField = "num_heads";
    static constexpr int64_t kFieldDefault = 4;  // PRN's four patch sizes
    // n = 1, 4, 16, 64 tokens: kMsaMaxHeads in kernels/prn_constants.h.
    static char const* fieldRule(int64_t heads) noexcept { return heads >= 1 && heads <= 4 ? nullptr : "1 to 4"; }

    using PrnPlugin::PrnPlugin;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                               nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                            nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs,
                            nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                            nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const* outputs,
                            int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                    void const* const* inputs, void* const* outputs, void* workspace,
                    cudaStream_t stream) noexcept override;
};

using MultiSizeAttentionPluginCreator = PrnPluginCreator<MultiSizeAttentionPlugin>;

}  // namespace plugin
}  // namespace prn_edge

#endif  // PRN_MULTI_SIZE_ATTENTION_PLUGIN_H
