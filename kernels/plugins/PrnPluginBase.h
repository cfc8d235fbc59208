// What both PRN plugins share, written once: TensorRT's four IPluginV3 interfaces on one object,
// the identity (Derived::kName, version "1", namespace "prn_edge"), cloning, one output, and the
// single int32 field each plugin carries (Derived::kField): serialized by the plugin, parsed and
// checked by its creator (Derived::kFieldDefault when absent, Derived::fieldRule to validate).
// The plugins themselves (ProtoResidualPlugin, MultiSizeAttentionPlugin) only add shapes,
// formats, workspace and enqueue.
#ifndef PRN_PLUGIN_BASE_H
#define PRN_PLUGIN_BASE_H

#include <NvInferRuntime.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "PrnPluginCommon.h"

namespace prn_edge {
namespace plugin {

template <class Derived>
class PrnPlugin : public nvinfer1::IPluginV3,
                  public nvinfer1::IPluginV3OneCore,
                  public nvinfer1::IPluginV3OneBuild,
                  public nvinfer1::IPluginV3OneRuntime {
public:
    explicit PrnPlugin(int32_t field) : mField(field) {}
    // TensorRT's interface classes are not copyable: a copy is a new object with the same field.
    PrnPlugin(PrnPlugin const& other)
        : IPluginV3(), IPluginV3OneCore(), IPluginV3OneBuild(), IPluginV3OneRuntime(), mField(other.mField) {}
    ~PrnPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override {
        switch (type) {
            case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
            case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
            case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        }
        return nullptr;
    }
    nvinfer1::IPluginV3* clone() noexcept override {
        try {
            return new Derived(static_cast<Derived const&>(*this));
        } catch (std::exception const& e) {
            logError(Derived::kName, std::string("clone failed: ") + e.what());
        }
        return nullptr;
    }

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override { return Derived::kName; }
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return 1; }

    // IPluginV3OneRuntime
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override { return clone(); }
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override {
        mSerialFields.clear();
        mSerialFields.emplace_back(Derived::kField, &mField, nvinfer1::PluginFieldType::kINT32, 1);
        mSerialFC.nbFields = static_cast<int32_t>(mSerialFields.size());
        mSerialFC.fields = mSerialFields.data();
        return &mSerialFC;
    }

protected:
    int32_t mField;  // the value of Derived::kField

private:
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerialFC{};
};

// The creator of plugin P: advertises P::kField, builds P from a field collection.
template <class P>
class PrnPluginCreator : public nvinfer1::IPluginCreatorV3One {
public:
    PrnPluginCreator() {
        mFields.emplace_back(P::kField, nullptr, nvinfer1::PluginFieldType::kINT32, 1);
        mFC.nbFields = static_cast<int32_t>(mFields.size());
        mFC.fields = mFields.data();
    }
    ~PrnPluginCreator() override = default;

    char const* getPluginName() const noexcept override { return P::kName; }
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &mFC; }

    nvinfer1::IPluginV3* createPlugin(char const*, nvinfer1::PluginFieldCollection const* fc,
                                      nvinfer1::TensorRTPhase) noexcept override {
        try {
            int64_t value = P::kFieldDefault;
            for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
                nvinfer1::PluginField const& field = fc->fields[i];
                if (field.name != nullptr && std::strcmp(field.name, P::kField) == 0 && !readIntField(field, &value)) {
                    logError(P::kName, std::string("field '") + P::kField + "' must be an integer");
                    return nullptr;
                }
            }
            if (char const* rule = P::fieldRule(value)) {
                logError(P::kName, std::string("field '") + P::kField + "' must be " + rule + ", got " +
                                       std::to_string(value));
                return nullptr;
            }
            return new P(static_cast<int32_t>(value));
        } catch (std::exception const& e) {
            logError(P::kName, std::string("createPlugin failed: ") + e.what());
        }
        return nullptr;
    }

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFC{};
};

}  // namespace plugin
}  // namespace prn_edge

#endif  // PRN_PLUGIN_BASE_H
