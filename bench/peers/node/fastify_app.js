// fastify peer for the Eddy benchmark suite: the same endpoints as bench/src/servers.rs.
'use strict';
const fastify = require('fastify')({ logger: false });
const { Agent, request } = require('undici');

const STUB = process.env.STUB_URL || 'http://127.0.0.1:9';
const agent = new Agent({ connections: 1000 });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const get = async (url) => (await request(url, { dispatcher: agent })).body.json();

fastify.get('/health', async () => 'ok');

fastify.get('/orders/:id', async (req) => {
  await sleep(15);
  return {
    id: req.params.id, customer_id: 'customer-42', status: 'CONFIRMED',
    lines: [
      { product_id: '01a2084a-13c6-777b-8067-97378cf31d56', quantity: 2, unit_price_cents: 1250 },
      { product_id: '01a2084a-13c6-777b-8067-97378cf31d57', quantity: 1, unit_price_cents: 990 },
    ],
    total_cents: 3490, currency: 'EUR',
    created_at: '2026-11-23T11:56:49.423838Z', updated_at: '2026-11-23T11:56:49.47134Z',
  };
});

fastify.get('/aggregate', async () => {
  const parts = [];
  for (const ms of [20, 35, 28]) parts.push(await get(`${STUB}/delay/${ms}`));
  return { parts };
});

fastify.get('/aggregate-parallel', async () => {
  const parts = await Promise.all([20, 35, 28].map((ms) => get(`${STUB}/delay/${ms}`)));
  return { parts };
});

fastify.post('/transform', async (req) => {
  const order = req.body;
  const lines = order.lines.map((l) => {
    const amount = l.quantity * l.unit_price_cents;
    return { sku: l.sku.toLowerCase(), name: l.name.toUpperCase(), amount_cents: amount, tax_cents: Math.round(amount * l.tax_rate) };
  });
  lines.sort((a, b) => b.amount_cents - a.amount_cents);
  const subtotal = lines.reduce((s, l) => s + l.amount_cents, 0);
  const tax = lines.reduce((s, l) => s + l.tax_cents, 0);
  return {
    order_id: order.order_id, customer: `${order.customer.name} <${order.customer.id}>`,
    currency: order.currency.toUpperCase(), lines, subtotal_cents: subtotal, tax_cents: tax, total_cents: subtotal + tax,
  };
});

const port = Number(process.argv[2] || 3000);
fastify.listen({ port, host: '127.0.0.1' }).then(() => console.log(`listening on ${port}`));
