// Shared pieces of PRN Edge's TensorRT plugins (IPluginV3): identity strings, logging, field
// parsing. The plugin identities match export/plugin_spec.py (names, version "1", namespace
// "prn_edge", int32 fields), which the ONNX graph surgery writes into the plugin nodes.
#ifndef PRN_PLUGIN_COMMON_H
#define PRN_PLUGIN_COMMON_H

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>

namespace prn_edge {
namespace plugin {

constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "prn_edge";

// The logger TensorRT hands over through setLoggerFinder() (nullptr before that).
nvinfer1::ILogger* getPluginLogger() noexcept;

// Log `msg` as an error (or `severity`) prefixed with the plugin's name; never throws.
void log(nvinfer1::ILogger::Severity severity, char const* plugin, std::string const& msg) noexcept;
inline void logError(char const* plugin, std::string const& msg) noexcept {
    log(nvinfer1::ILogger::Severity::kERROR, plugin, msg);
}

// Read an integer plugin field whatever integer type the producer used (the ONNX parser
// passes ints as INT32, a Python user may pass INT64). Returns false if `field` is not one.
bool readIntField(nvinfer1::PluginField const& field, int64_t* value) noexcept;

// 0 for FP32, 1 for FP16 (the `dtype` of kernels/prn_launch.h), -1 for anything else.
inline int kernelDType(nvinfer1::DataType type) noexcept {
    return type == nvinfer1::DataType::kFLOAT ? 0 : type == nvinfer1::DataType::kHALF ? 1 : -1;
}

inline int64_t volume(nvinfer1::Dims const& dims, int32_t from = 0) noexcept {
    int64_t v = 1;
    for (int32_t i = from; i < dims.nbDims; ++i) v *= dims.d[i];
    return v;
}

}  // namespace plugin
}  // namespace prn_edge

#endif  // PRN_PLUGIN_COMMON_H
