#!/usr/bin/env node
// Drives an analytics API (the project's emulator, or the real one) with the
// official Inkeep Analytics TypeScript SDK as its client.
//
// The SDK validates every answer against its own response models and throws
// ResponseValidationError when one does not fit, and maps error statuses to
// its own error classes; so each step passes only when the server takes what
// the SDK sends and answers the way the SDK expects: log, upsert, get, list,
// get by external id, delete a conversation; submit, get and list feedback;
// log events; a wrong key (Unauthorized) and a refused body
// (UnprocessableEntity).
//
// Usage: node sdk_client.mjs URL KEY
// Prints "ok STEP" or "FAIL STEP: why" per step, then "N passed, N failed".
// Exits 0 when every step passed, 1 otherwise. Install once with `npm ci`.
import { InkeepAnalytics } from "@inkeep/inkeep-analytics";
import {
  ResponseValidationError,
  Unauthorized,
  UnprocessableEntity,
  NotFound,
} from "@inkeep/inkeep-analytics/models/errors";

const [url, key] = process.argv.slice(2);
if (!url || !key) {
  console.error("usage: node sdk_client.mjs URL KEY");
  process.exit(2);
}

const options = { serverURL: url, retryConfig: { strategy: "none" }, timeoutMs: 10_000 };
const sdk = new InkeepAnalytics({ ...options, apiIntegrationKey: key });
const wrong = new InkeepAnalytics({ ...options, apiIntegrationKey: `${key}-wrong` });
const security = { apiIntegrationKey: key };

function check(condition, what) {
  if (!condition) throw new Error(what);
}

function same(actual, expected, what) {
  const [a, e] = [JSON.stringify(actual), JSON.stringify(expected)];
  check(a === e, `${what}: got ${a}, expected ${e}`);
}

async function refused(call, errorClass) {
  try {
    await call();
  } catch (e) {
    if (e instanceof errorClass) return e;
    throw new Error(`expected ${errorClass.name}, got ${e?.name}: ${String(e?.message).slice(0, 500)}`);
  }
  throw new Error(`expected ${errorClass.name}, but the call succeeded`);
}

const conversationId = `sdk-${Date.now()}`;
const state = {};
const steps = [
  [
    "log a conversation (a message without an id)",
    async () => {
      const logged = await sdk.conversations.log(security, {
        id: conversationId,
        type: "openai",
        externalId: `ext-${conversationId}`,
        createdAt: new Date("2026-11-23T10:15:02.481Z"),
        userProperties: { id: "u1", additionalProperties: { plan: "pro" } },
        tags: ["sdk"],
        messages: [
          { id: `${conversationId}-m0`, role: "user", content: "How do I set VAT?" },
          {
            role: "assistant",
            content: [{ type: "text", text: "Like this." }],
            toolCalls: [{ id: "call_1", type: "function", function: { name: "docs", arguments: "{}" } }],
            properties: { model: "gpt-4o" },
          },
        ],
      });
      same(logged.id, conversationId, "id");
      same(logged.messages.length, 2, "message count");
      check(typeof logged.messages[1].id === "string" && logged.messages[1].id.length > 0, "assigned message id");
      same(logged.messages[1].toolCalls?.[0]?.function?.name, "docs", "tool call");
      same(logged.messagesOpenAIFormat.length, 2, "messagesOpenAIFormat");
      same(logged.externalUrl, null, "externalUrl");
      same(logged.userProperties?.id, "u1", "userProperties.id");
      same(logged.userProperties?.additionalProperties, { plan: "pro" }, "userProperties.plan");
      state.assistantId = logged.messages[1].id;
    },
  ],
  [
    "upsert replaces the message list",
    async () => {
      const logged = await sdk.conversations.log(security, {
        id: conversationId,
        type: "openai",
        externalId: `ext-${conversationId}`,
        messages: [
          { id: `${conversationId}-m0`, role: "user", content: "How do I set VAT?" },
          { id: state.assistantId, role: "assistant", content: "Like this." },
          { id: `${conversationId}-m2`, role: "user", content: "Thanks", createdAt: new Date() },
        ],
      });
      same(logged.messages.map((m) => m.id), [`${conversationId}-m0`, state.assistantId, `${conversationId}-m2`], "ids");
      same(logged.createdAt.slice(0, 19), "2026-11-23T10:15:02", "createdAt kept");
    },
  ],
  [
    "get the conversation",
    async () => {
      const got = await sdk.conversations.get(security, { id: conversationId });
      same(got.messages.length, 3, "message count");
      same(got.type, "openai", "type");
    },
  ],
  [
    "list conversations",
    async () => {
      const page = await sdk.conversations.list({ limit: 50, offset: 0 });
      check(page.conversations.some((c) => c.id === conversationId), "the conversation is listed");
      same(page.count, page.conversations.length, "count");
    },
  ],
  [
    "get the conversation by its external id",
    async () => {
      const got = await sdk.conversation.getConversationByExternalId({ externalId: `ext-${conversationId}` });
      same(got.id, conversationId, "id");
    },
  ],
  [
    "submit feedback",
    async () => {
      const feedback = await sdk.feedback.submit({
        type: "negative",
        messageId: state.assistantId,
        createdAt: new Date("2026-11-23T10:17:00Z"),
        reasons: [{ label: "inaccurate", details: "wrong version" }],
        userProperties: { id: 7, additionalProperties: {} },
      });
      same(feedback.messageId, state.assistantId, "messageId");
      same(feedback.type, "negative", "type");
      state.feedbackId = feedback.id;
    },
  ],
  [
    "get and list feedback",
    async () => {
      const got = await sdk.feedback.getFeedbackById({ id: state.feedbackId });
      same(got.conversation.id, conversationId, "conversation");
      same(got.message.id, state.assistantId, "message");
      const all = await sdk.feedback.list({ limit: 50, offset: 0 });
      check(all.negativeFeedback.some((f) => f.id === state.feedbackId), "listed");
      same(all.negativeFeedbackCount >= 1, true, "count");
    },
  ],
  [
    "log events about a message and a conversation",
    async () => {
      const copied = await sdk.events.log(security, {
        type: "message:copied",
        entityType: "message",
        messageId: state.assistantId,
        properties: { chars: 10 },
      });
      same([copied.entityType, copied.messageId], ["message", state.assistantId], "message event");
      const shared = await sdk.events.log(security, {
        type: "conversation:shared",
        entityType: "conversation",
        conversationId,
        createdAt: new Date("2026-11-23T10:18:00+01:00"),
      });
      same([shared.entityType, shared.conversationId], ["conversation", conversationId], "conversation event");
    },
  ],
  [
    "a wrong key is Unauthorized",
    async () => {
      const e = await refused(() => wrong.conversations.list({}), Unauthorized);
      same(e.code, "unauthorized", "code");
      await refused(() => wrong.feedback.submit({ type: "positive", messageId: state.assistantId }), Unauthorized);
      await refused(
        () => sdk.events.log({ apiIntegrationKey: "nope" }, { type: "x", entityType: "conversation", conversationId }),
        Unauthorized,
      );
    },
  ],
  [
    "a refused body is UnprocessableEntity",
    async () => {
      const e = await refused(
        () => sdk.feedback.submit({ type: "positive", messageId: "no-such-message" }),
        UnprocessableEntity,
      );
      check(e.detail.includes("$.messageId"), `detail names the field: ${e.detail}`);
      await refused(() => sdk.conversations.log(security, { id: conversationId, type: "openai", messages: [] }), UnprocessableEntity);
    },
  ],
  [
    "delete the conversation",
    async () => {
      const deleted = await sdk.conversations.delete(security, { id: conversationId });
      same(deleted.success, true, "success");
      await refused(() => sdk.conversations.get(security, { id: conversationId }), NotFound);
    },
  ],
];

let passed = 0;
let failed = 0;
for (const [name, step] of steps) {
  try {
    await step();
    passed += 1;
    console.log(`ok ${name}`);
  } catch (e) {
    failed += 1;
    const kind = e instanceof ResponseValidationError ? "ResponseValidationError: " : "";
    const detail = e instanceof ResponseValidationError ? ` ${e.pretty?.() ?? ""}` : "";
    console.log(`FAIL ${name}: ${kind}${String(e?.message).slice(0, 1500)}${detail}`.replaceAll("\n", " | "));
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
