# The pgfn daemon. `docker compose up` builds it from this repository.
FROM node:20-bookworm-slim
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY bin ./bin
COPY src ./src
COPY sql ./sql
COPY examples ./examples
RUN npm ci && npm prune --omit=dev
ENV NODE_ENV=production
# The HTTP API (PGFN_HTTP_PORT).
EXPOSE 7780
ENTRYPOINT ["node", "bin/pgfn.js"]
CMD ["start", "--migrate"]
