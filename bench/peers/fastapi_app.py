"""FastAPI peer for the Eddy benchmark suite: the same endpoints as bench/src/servers.rs."""
import asyncio
import os

import httpx
from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()
STUB = os.environ.get("STUB_URL", "http://127.0.0.1:9")
client = httpx.AsyncClient(limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000))


@app.get("/health")
async def health():
    return "ok"


@app.get("/orders/{order_id}")
async def order(order_id: str):
    await asyncio.sleep(0.015)
    return {
        "id": order_id, "customer_id": "customer-42", "status": "CONFIRMED",
        "lines": [
            {"product_id": "01a2084a-13c6-777b-8067-97378cf31d56", "quantity": 2, "unit_price_cents": 1250},
            {"product_id": "01a2084a-13c6-777b-8067-97378cf31d57", "quantity": 1, "unit_price_cents": 990},
        ],
        "total_cents": 3490, "currency": "EUR",
        "created_at": "2026-11-23T11:56:49.423838Z", "updated_at": "2026-11-23T11:56:49.47134Z",
    }


@app.get("/aggregate")
async def aggregate():
    parts = []
    for ms in (20, 35, 28):
        parts.append((await client.get(f"{STUB}/delay/{ms}")).json())
    return {"parts": parts}


@app.get("/aggregate-parallel")
async def aggregate_parallel():
    responses = await asyncio.gather(*(client.get(f"{STUB}/delay/{ms}") for ms in (20, 35, 28)))
    return {"parts": [r.json() for r in responses]}


class Customer(BaseModel):
    id: str
    name: str
    email: str


class LineIn(BaseModel):
    sku: str
    name: str
    quantity: int
    unit_price_cents: int
    tax_rate: float


class TransformIn(BaseModel):
    order_id: str
    customer: Customer
    currency: str
    lines: list[LineIn]


@app.post("/transform")
async def transform(order: TransformIn):
    lines = []
    for l in order.lines:
        amount = l.quantity * l.unit_price_cents
        lines.append({"sku": l.sku.lower(), "name": l.name.upper(), "amount_cents": amount, "tax_cents": round(amount * l.tax_rate)})
    lines.sort(key=lambda l: -l["amount_cents"])
    subtotal = sum(l["amount_cents"] for l in lines)
    tax = sum(l["tax_cents"] for l in lines)
    return {
        "order_id": order.order_id, "customer": f"{order.customer.name} <{order.customer.id}>",
        "currency": order.currency.upper(), "lines": lines,
        "subtotal_cents": subtotal, "tax_cents": tax, "total_cents": subtotal + tax,
    }
