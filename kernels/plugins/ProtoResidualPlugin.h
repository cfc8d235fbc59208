// TensorRT plugin "ProtoResidual" v1 (namespace "prn_edge"): the fused nearest-prototype
// residual of kernels/proto_residual.cu.
//
//   inputs:  0 features (B, C, H, W)   FP32 or FP16, linear
//            1 prototypes (K, C*H*W)   same type as features (the bank, an initializer)
//            2 sqnorm (K,)             FP32 (||P_k||^2 overflows FP16 for large D)
//   output:  0 residual (B, C, H, W)   same type as features
//   field:   mode (int32): 0 |F - P_k*|, 1 (F - P_k*)^2; k* = argmin_k ||P_k||^2 - 2 <F, P_k>
//   workspace: per-slice partial dot products (FP32) and the chosen indices (kernels/prn_plan.h)
#ifndef PRN_PROTO_RESIDUAL_PLUGIN_H
#define PRN_PROTO_RESIDUAL_PLUGIN_H

#include <NvInferRuntime.h>

#include <cstdint>

#include "PrnPluginBase.h"

namespace prn_edge {
namespace plugin {

class ProtoResidualPlugin : public PrnPlugin<ProtoResidualPlugin> {
public:
    static constexpr char const* kName = "ProtoResidual";
    static constexpr char const* kField = "mode";
    static constexpr int64_t kFieldDefault = 0;  // abs, the paper's wording
    static char const* fieldRule(int64_t mode) noexcept {  // nullptr: valid; else what it must be
        return mode == 0 || mode == 1 ? nullptr : "0 (abs) or 1 (square)";
    }

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

using ProtoResidualPluginCreator = PrnPluginCreator<ProtoResidualPlugin>;

}  // namespace plugin
}  // namespace prn_edge

#endif  // PRN_PROTO_RESIDUAL_PLUGIN_H
