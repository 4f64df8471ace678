// index.ts: the package entry: the app factory, the config loader and the streaming library.

export { createApp, type ProxyApp, type AppOptions } from './app';
export { loadConfig, testConfig, ConfigError, type Config } from './config';
export { ProxyError, type ErrorCode } from './errors';
export { streamChat, toReadable, type ChatDelta, type StreamChatOptions } from './library';
export { createSseDecoder, type SseDecoder } from './stream/decoder';
export { startSimulator, type Simulator } from './simulator/server';
