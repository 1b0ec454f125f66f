// wasmesh test plugin built with the AssemblyScript SDK (@solo-io/proxy-runtime 0.1.8,
// ABI 0.2.0): adds `x-sdk: assemblyscript` to requests and responses.
// Behaviour: plugins/README.md.

// The host-facing exports (proxy_on_*, proxy_abi_version_0_2_0, malloc).
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext,
  Context,
  registerRootContext,
  FilterHeadersStatusValues,
  stream_context,
} from "@solo-io/proxy-runtime";

class AddHeaderRoot extends RootContext {
  // Replaces RootContext.onConfigure of proxy-runtime 0.1.8, which passes
  // `configuration_size` as the *size out-pointer* of proxy_get_buffer_bytes: the host
  // then writes the length at guest address <configuration_size> (corrupting memory), and
  // with an empty configuration the SDK decodes a stale pointer (trap or double free).
  // This plugin takes no configuration, so it does not read it.
  onConfigure(configuration_size: u32): bool {
    return true;
  }

  createContext(context_id: u32): Context {
    return new AddHeader(context_id, this);
  }
}

class AddHeader extends Context {
  constructor(context_id: u32, root_context: AddHeaderRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.request.add("x-sdk", "assemblyscript");
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-sdk", "assemblyscript");
    return FilterHeadersStatusValues.Continue;
  }
}

// This SDK picks the root context factory by the plugin's root_id (property
// `plugin_root_id`). Answer to "add_header" and to an empty root_id.
const factory = (context_id: u32): RootContext => new AddHeaderRoot(context_id);
registerRootContext(factory, "add_header");
registerRootContext(factory, "");
