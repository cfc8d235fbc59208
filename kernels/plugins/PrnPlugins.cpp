// Registration of PRN Edge's TensorRT plugins: the two entry points TensorRT looks for in a
// plugin library (TensorRT >= 10.0), and the shared logging and field helpers.
//
// Load the library with trtexec --dynamicPlugins=libprn_edge_plugins.so, with
// IPluginRegistry::loadLibrary() / trt.get_plugin_registry().load_library(path) in Python, or
// serialize it into the engine (--setPluginsToSerialize). Registration happens when TensorRT
// calls getCreators(): the library does not link libnvinfer and does not register itself on
// dlopen (a bare ctypes.CDLL() of it registers nothing; use load_library).
#include "MultiSizeAttentionPlugin.h"
#include "PrnPluginCommon.h"
#include "ProtoResidualPlugin.h"

#include <mutex>

using namespace nvinfer1;

namespace prn_edge {
namespace plugin {

namespace {
std::mutex gLoggerMutex;
ILoggerFinder* gLoggerFinder = nullptr;
}  // namespace

ILogger* getPluginLogger() noexcept {
    std::lock_guard<std::mutex> lock(gLoggerMutex);
    return gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
}

void log(ILogger::Severity severity, char const* plugin, std::string const& msg) noexcept {
    try {
        std::string const line = std::string("[prn_edge::") + plugin + "] " + msg;
        if (ILogger* logger = getPluginLogger()) logger->log(severity, line.c_str());
    } catch (...) {  // logging must never throw through TensorRT
    }
}

bool readIntField(PluginField const& field, int64_t* value) noexcept {
    if (field.data == nullptr || field.length < 1) return false;
    switch (field.type) {
        case PluginFieldType::kINT8: *value = *static_cast<int8_t const*>(field.data); return true;
        case PluginFieldType::kINT16: *value = *static_cast<int16_t const*>(field.data); return true;
        case PluginFieldType::kINT32: *value = *static_cast<int32_t const*>(field.data); return true;
        case PluginFieldType::kINT64: *value = *static_cast<int64_t const*>(field.data); return true;
        default: return false;
    }
}

}  // namespace plugin
}  // namespace prn_edge

extern "C" TENSORRTAPI void setLoggerFinder(ILoggerFinder* finder) {
    std::lock_guard<std::mutex> lock(prn_edge::plugin::gLoggerMutex);
    if (prn_edge::plugin::gLoggerFinder == nullptr && finder != nullptr) prn_edge::plugin::gLoggerFinder = finder;
}

extern "C" TENSORRTAPI IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    static prn_edge::plugin::ProtoResidualPluginCreator sProtoResidual;
    static prn_edge::plugin::MultiSizeAttentionPluginCreator sMultiSizeAttention;
    static IPluginCreatorInterface* const kCreators[] = {&sProtoResidual, &sMultiSizeAttention};
    nbCreators = 2;
    return kCreators;
}
