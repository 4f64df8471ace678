# Dockerfile: the proxy as a small production image. Build stage compiles TypeScript; the runtime
# stage holds production dependencies, dist/ and public/ only, and runs as the unprivileged `node`.
#
#   docker build -t deepseek-stream-proxy .
#   docker run --rm -p 3000:3000 --stop-timeout 35 \
#     -e DEEPSEEK_API_KEY=sk-... -e REDIS_URL=redis://redis:6379 deepseek-stream-proxy
#
# --stop-timeout: `docker stop` sends SIGTERM and, by default, SIGKILL 10 s later; the server
# drains for SHUTDOWN_GRACE_MS (25 s by default), so give it more than that.

ARG NODE_IMAGE=node:22-bookworm-slim

# ---- build: all dependencies, then tsc -> dist/
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# ---- runtime: production dependencies and the compiled server
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
# Owned by root and read-only to the server's user: the process cannot rewrite its own code.
COPY --from=build /app/dist ./dist
COPY public ./public
USER node
EXPOSE 3000
# Liveness with node itself (the slim image has no curl): GET /healthz on PORT (default 3000),
# over HTTPS when TLS_CERT_FILE is set (the server then speaks only HTTPS), at HOST when it names
# one address (127.0.0.1 when it is unset or a wildcard).
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["node", "-e", "const c=require(process.env.TLS_CERT_FILE?'https':'http');const h=(process.env.HOST||'').trim().replace(/^\\[|\\]$/g,'');const r=c.get({host:!h||h==='0.0.0.0'||h==='::'?'127.0.0.1':h,port:process.env.PORT||3000,path:'/healthz',rejectUnauthorized:false,timeout:4000},(s)=>process.exit(s.statusCode===200?0:1));r.on('timeout',()=>r.destroy());r.on('error',()=>process.exit(1));"]
CMD ["node", "dist/server.js"]
