// A create → tag → task → note → search → delete walk with the official HighLevel Node SDK
// (@gohighlevel/api-client) pointed at `hlbridge sandbox`.
//
//   npm install @gohighlevel/api-client
//   hlbridge sandbox --seed demo > sandbox.json &      # prints one JSON line
//   node examples/node-sdk/walk.js sandbox.json
const fs = require('fs');
const { HighLevel } = require('@gohighlevel/api-client');

async function main() {
  const info = JSON.parse(fs.readFileSync(process.argv[2] || 'sandbox.json', 'utf8').split('\n')[0]);
  HighLevel.BASE_URL = info.base_url;
  const ghl = new HighLevel({ privateIntegrationToken: info.token });
  const locationId = info.location_id;
  const step = (name, value) => console.log(name.padEnd(10), JSON.stringify(value));

  const created = await ghl.contacts.createContact({ locationId, firstName: 'Grace', lastName: 'Hopper', email: `grace+${Date.now()}@example.com` });
  const id = created.contact.id;
  step('create', { id, email: created.contact.email });
  step('tags', await ghl.contacts.addTags({ contactId: id }, { tags: ['navy', 'cobol'] }));
  const task = await ghl.contacts.createTask({ contactId: id }, { title: 'Call back', dueDate: '2030-01-01T10:00:00Z', completed: false });
  step('task', { id: task.task.id, title: task.task.title });
  const note = await ghl.contacts.createNote({ contactId: id }, { body: 'Met at the conference' });
  step('note', { id: note.note.id, body: note.note.body });
  const found = await ghl.contacts.searchContactsAdvanced({ locationId, pageLimit: 5, filters: [{ field: 'tags', operator: 'eq', value: 'cobol' }] });
  step('search', { total: found.total, first: found.contacts[0] && found.contacts[0].id });
  step('delete', await ghl.contacts.deleteContact({ contactId: id }));
  try {
    await ghl.contacts.getContact({ contactId: id });
    throw new Error('contact still there after delete');
  } catch (e) {
    const status = e.statusCode || (e.response && e.response.status);
    step('get', { status, message: (e.response && e.response.data && e.response.data.message) || e.message });
    if (status !== 404) process.exit(1);
  }
}

main().catch((e) => { console.error(e.response ? e.response.data : e); process.exit(1); });
