# keywatch on Node 24. The embedded engine needs glibc (chdb ships a linux-x64-gnu build); with CLICKHOUSE_URL set
# (as in docker-compose.yml) keywatch talks to a ClickHouse server instead.
FROM node:24-bookworm-slim
WORKDIR /app
COPY package.json package-lock.json ./
# npm ci refuses this lockfile (chdb's optional platform packages are resolved at install time).
RUN npm install --omit=dev --no-audit --no-fund
COPY . .
ENV HOST=0.0.0.0 PORT=8080 KEYWATCH_DATA_DIR=/data
# malloc keeps large blocks for reuse, on huge pages, and V8's young generation stays small (bin/runtime-env.js says
# why; test/compose.test.ts keeps the two equal).
ENV GLIBC_TUNABLES=glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=67108864:glibc.malloc.trim_threshold=268435456
ENV NODE_OPTIONS="--max-semi-space-size=16 --disable-warning=TimeoutNegativeWarning"
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["node", "bin/keywatch.js"]
CMD ["start"]
